"""A small fake Hugging Face Hub on 127.0.0.1 that speaks the wire format `huggingface_hub` 2.4 expects.

Endpoints (everything else answers 404):

    GET  /api/agent-harnesses                          404 (the client's agent-detection registry)
    GET  /api/models?search&author&filter&pipeline_tag&gated&sort&direction&limit&full&cardData&config&expand
    GET  /api/models/{id}[/revision/{rev}]?expand&securityStatus&blobs
    GET  /api/models/{id}/safetensors-metadata/{index}  (HfApi.get_sharded_safetensors_metadata)
    GET  /api/models/{id}/tree/{rev}?recursive          (list_repo_tree; snapshot_download lists files this way)
    HEAD/GET /{id}/resolve/{rev}/{filename}            Range: bytes=a-b -> 206 + Content-Range
    HEAD/GET /cdn/{id}/{sha}/{filename}                 only reached through `FakeHub.redirect_lfs`

Errors carry the headers `hf_raise_for_status` maps to exception classes: `X-Error-Code` (RepoNotFound,
RevisionNotFound, EntryNotFound, GatedRepo) and `X-Error-Message`, with a JSON body `{"error": ...}`.

The client reads `HF_HUB_OFFLINE`, `HF_HOME`, `HF_HUB_CACHE` and `HF_HUB_DISABLE_TELEMETRY` once, at import, and
tests/conftest.py sets `HF_HUB_OFFLINE=1`: call `use_fake_hub(monkeypatch, tmp_path, hub)` in a test to patch
those constants (and point `HfApi()` / `hf_hub_download` at the fake hub by default).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

__all__ = ["FakeHub", "Repo", "Request", "VirtualFile", "make_index", "make_safetensors", "safetensors_header",
           "use_fake_hub"]

DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}
VIRTUAL_THRESHOLD = 1 << 20  # make_safetensors serves bigger files as VirtualFile
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack", ".ckpt")
DEFAULT_DATE = "2024-01-01T00:00:00.000Z"
# What GET /api/models returns per model without expand / full / cardData / config (as the real Hub does).
LIST_FIELDS = ("_id", "id", "likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag", "library_name",
               "createdAt", "modelId")
LIST_FULL_FIELDS = LIST_FIELDS + ("author", "gated", "disabled", "lastModified", "sha", "siblings", "inference")
SORT_KEYS = {"downloads", "likes", "lastModified", "createdAt", "trendingScore", "downloadsAllTime"}


# ---------------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VirtualFile:
    """A file made of `header` followed by zero bytes up to `total_size`; ranges are generated on the fly."""

    header: bytes
    total_size: int

    def __post_init__(self):
        if self.total_size < len(self.header):
            raise ValueError("total_size is smaller than the header")

    def __len__(self) -> int:
        return self.total_size

    def read(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop)."""
        stop = min(stop, self.total_size)
        if start >= stop:
            return b""
        head = self.header[start:stop]
        return head + bytes(stop - start - len(head))


def _read(content, start: int, stop: int) -> bytes:
    return content.read(start, stop) if isinstance(content, VirtualFile) else bytes(content[start:stop])


def _is_lfs(filename: str, content) -> bool:
    return isinstance(content, VirtualFile) or filename.endswith(LFS_SUFFIXES) or len(content) > 10 * VIRTUAL_THRESHOLD


def _git_blob_sha1(content) -> str:
    if isinstance(content, VirtualFile):
        return hashlib.sha1(b"virtual %d\0" % content.total_size + content.header).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _sha256(content) -> str:
    if isinstance(content, VirtualFile):  # stand-in: hashing gigabytes of zeros would be pointless
        return hashlib.sha256(b"virtual %d\0" % content.total_size + content.header).hexdigest()
    return hashlib.sha256(content).hexdigest()


def _etag(filename: str, content) -> str:
    return _sha256(content) if _is_lfs(filename, content) else _git_blob_sha1(content)


def make_safetensors(tensors: dict[str, tuple[str, tuple[int, ...]]], metadata: dict[str, str] | None = None,
                     virtual: bool | None = None) -> bytes | VirtualFile:
    """A valid safetensors file: u64-LE header length, JSON header (dtype, shape, data_offsets), zero data.

    `tensors` maps a name to (dtype, shape), e.g. {"lm_head.weight": ("BF16", (32000, 4096))}, in file order.
    The header always describes the real shapes. The result is plain bytes when the whole file is under 1 MiB and
    `virtual` is not True; otherwise a `VirtualFile` (header + zeros generated on the fly, never materialised).
    """
    header: dict = {"__metadata__": dict(metadata)} if metadata is not None else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"unknown safetensors dtype {dtype!r}")
        n = 1
        for dim in shape:
            n *= int(dim)
        size = n * DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": [int(d) for d in shape], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the reference writer pads the header to a multiple of 8 with spaces
    prefix = struct.pack("<Q", len(raw)) + raw
    total = len(prefix) + offset
    if virtual is None:
        virtual = total >= VIRTUAL_THRESHOLD
    return VirtualFile(prefix, total) if virtual else prefix + bytes(offset)


def make_index(shards: dict[str, bytes | VirtualFile], metadata: dict | None = None) -> bytes:
    """`model.safetensors.index.json` for shard files built by `make_safetensors` ({filename: content})."""
    weight_map: dict[str, str] = {}
    total = 0
    for filename, content in shards.items():
        header = safetensors_header(content)
        for name, t in header.items():
            if name != "__metadata__":
                weight_map[name] = filename
                total += t["data_offsets"][1] - t["data_offsets"][0]
    return json.dumps({"metadata": {"total_size": total, **(metadata or {})}, "weight_map": weight_map},
                      indent=2).encode()


def safetensors_header(content: bytes | VirtualFile) -> dict:
    """The decoded JSON header of a safetensors file."""
    (n,) = struct.unpack("<Q", _read(content, 0, 8))
    return json.loads(_read(content, 8, 8 + n))


def _param_summary(files: dict) -> dict | None:
    """The `safetensors` field of model info: {"parameters": {dtype: count}, "total": count}."""
    names = [f for f in files if f.endswith(".safetensors")]
    if "model.safetensors" in files:
        names = ["model.safetensors"]
    elif "model.safetensors.index.json" in files:
        names = sorted(set(json.loads(files["model.safetensors.index.json"])["weight_map"].values()))
    if not names:
        return None
    params: dict[str, int] = {}
    for name in names:
        if name not in files:
            continue
        for key, t in safetensors_header(files[name]).items():
            if key == "__metadata__":
                continue
            n = 1
            for d in t["shape"]:
                n *= d
            params[t["dtype"]] = params.get(t["dtype"], 0) + n
    return {"parameters": params, "total": sum(params.values())}


def _card_data(files: dict) -> dict | None:
    readme = files.get("README.md")
    if not isinstance(readme, bytes):
        return None
    m = re.match(rb"---\s*\n(.*?)\n---\s*(\n|$)", readme, re.S)
    if not m:
        return None
    try:
        import yaml
    except ImportError:
        return None
    data = yaml.safe_load(m.group(1).decode())
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------------------------------
# Repos and recorded requests
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Repo:
    """One model repo. Keys missing from `info` are filled in the way the real Hub derives them (see __post_init__)."""

    id: str
    info: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # filename -> bytes | VirtualFile
    gated: bool = False  # files (not info) need a token in FakeHub.tokens; info["gated"] truthy implies it
    fail: dict[str, int] = field(default_factory=dict)  # path substring -> forced status, for this repo's requests

    def __post_init__(self):
        info = self.info
        if info.get("gated"):
            self.gated = True
        info.setdefault("_id", hashlib.md5(self.id.encode()).hexdigest()[:24])
        info["id"] = self.id
        info.setdefault("modelId", self.id)
        info.setdefault("author", self.id.split("/")[0] if "/" in self.id else None)
        info.setdefault("sha", hashlib.sha1(self.id.encode()).hexdigest())
        info.setdefault("private", False)
        info.setdefault("disabled", False)
        info.setdefault("gated", "auto" if self.gated else False)
        info.setdefault("downloads", 0)
        info.setdefault("likes", 0)
        info.setdefault("trendingScore", 0)
        info.setdefault("lastModified", DEFAULT_DATE)
        info.setdefault("createdAt", DEFAULT_DATE)
        info.setdefault("siblings", [{"rfilename": f} for f in self.files])
        if "cardData" not in info and (card := _card_data(self.files)) is not None:
            info["cardData"] = card
        if "config" not in info and isinstance(self.files.get("config.json"), bytes):
            cfg = json.loads(self.files["config.json"])
            info["config"] = {k: cfg[k] for k in ("architectures", "model_type") if k in cfg}
        if "safetensors" not in info and (st := _param_summary(self.files)) is not None:
            info["safetensors"] = st
        info.setdefault("usedStorage", sum(len(c) for c in self.files.values()))
        if "tags" not in info:
            card = info.get("cardData") or {}
            tags = [info.get("library_name"), "safetensors" if "safetensors" in info else None,
                    (info.get("config") or {}).get("model_type"), info.get("pipeline_tag")]
            langs = card.get("language") or []
            tags += [langs] if isinstance(langs, str) else list(langs)
            for key in ("base_model", "datasets"):
                vals = card.get(key) or []
                prefix = "base_model:" if key == "base_model" else "dataset:"
                tags += [prefix + v for v in ([vals] if isinstance(vals, str) else vals)]
            if card.get("license"):
                tags.append(f"license:{card['license']}")
            tags.append("region:us")
            info["tags"] = list(dict.fromkeys(t for t in tags if t))

    @property
    def sha(self) -> str:
        return self.info["sha"]


@dataclass
class Request:
    method: str
    path: str  # URL-decoded path, without the query string
    query: dict[str, list[str]]  # parse_qs(keep_blank_values=True)
    headers: dict[str, str]  # lower-cased names
    status: int = 0  # 0 until answered
    host: str = ""  # "127.0.0.1:PORT" or "localhost:PORT" (the fake CDN of redirect_lfs)


# ---------------------------------------------------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------------------------------------------------
class FakeHub:
    """Usage: `with FakeHub([Repo(...)]) as hub: HfApi(endpoint=hub.url, token=False).model_info(...)`."""

    def __init__(self, repos: list[Repo] = (), tokens=("hf_good",)):
        self.repos: dict[str, Repo] = {r.id: r for r in repos}
        self.tokens: set[str] = set(tokens)
        self.requests: list[Request] = []
        self.rate_limit = 0  # answer the next N requests (agent-harnesses excepted) with 429 + Retry-After: 0
        self.delay = 0.0  # seconds to sleep before answering /api/models*
        self.latency = 0.0  # seconds added to every answer: a simulated network round trip (benchmarks)
        self.fail: dict[str, int] = {}  # path substring -> forced status, for every request
        self.page_size = 1000  # /api/models page size; more results -> Link: <...>; rel="next"
        self.redirect_lfs = False  # resolve LFS files with 302 to http://localhost:PORT/cdn/... (another origin)
        self.url = ""
        self.port = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="FakeHub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for tests ----------------------------------------------------------------------------------------------
    def add(self, repo: Repo) -> Repo:
        self.repos[repo.id] = repo
        return repo

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def find(self, method: str | None = None, contains: str = "") -> list[Request]:
        """Recorded requests with this method (any if None) whose path contains `contains`."""
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method) and contains in r.path]

    def full_downloads(self, suffix: str = ".safetensors") -> list[Request]:
        """GET requests of files ending in `suffix` without a Range header (whole-file downloads)."""
        return [r for r in self.find("GET") if r.path.endswith(suffix) and "range" not in r.headers
                and ("/resolve/" in r.path or r.path.startswith("/cdn/"))]

    def _record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def _take_rate_limit(self) -> bool:
        with self._lock:
            if self.rate_limit > 0:
                self.rate_limit -= 1
                return True
            return False


class _Response(Exception):
    def __init__(self, status: int, body: bytes = b"", headers: dict | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


def _error(status: int, message: str, code: str | None = None, **headers) -> _Response:
    h = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message, **headers}
    if code:
        h["X-Error-Code"] = code
    return _Response(status, json.dumps({"error": message}).encode(), h)


def _json(obj, status: int = 200, **headers) -> _Response:
    return _Response(status, json.dumps(obj).encode(), {"Content-Type": "application/json; charset=utf-8", **headers})


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, format, *args):  # silence the default stderr logging
        pass

    def do_GET(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def do_PATCH(self):
        self._handle()

    # -- plumbing -----------------------------------------------------------------------------------------------------
    def _handle(self):
        split = urlsplit(self.path)
        req = Request(method=self.command, path=unquote(split.path), query=parse_qs(split.query, keep_blank_values=True),
                      headers={k.lower(): v for k, v in self.headers.items()}, host=self.headers.get("Host", ""))
        self.hub._record(req)  # on arrival: status stays 0 while the answer is pending (e.g. during `delay`)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        try:
            resp = self._route(req, split.path)
        except _Response as r:
            resp = r
        except Exception as e:  # a bug in the fake hub: make it visible as a 500
            resp = _error(500, f"fake hub error: {type(e).__name__}: {e}")
        req.status = resp.status
        try:
            self.send_response(resp.status)
            body = resp.body
            stream = None
            if isinstance(body, tuple):  # (content, start, stop): streamed, for big virtual files
                stream, body = body, None
                size = stream[2] - stream[1]
            else:
                size = len(body)
            headers = {"Content-Length": str(size), **resp.headers}
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                if stream is None:
                    self.wfile.write(body)
                else:
                    content, start, stop = stream
                    for pos in range(start, stop, 1 << 20):
                        self.wfile.write(_read(content, pos, min(pos + (1 << 20), stop)))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _token(self, req: Request) -> str | None:
        auth = req.headers.get("authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    # -- routing ------------------------------------------------------------------------------------------------------
    def _route(self, req: Request, raw_path: str) -> _Response:
        hub = self.hub
        path = req.path
        if path == "/api/agent-harnesses":
            raise _error(404, "Not Found")
        if hub.latency:
            hub._stopping.wait(hub.latency)
        if hub._take_rate_limit():
            raise _error(429, "You have been rate-limited.", **{"Retry-After": "0"})
        for sub, status in list(hub.fail.items()):
            if sub in path:
                raise _error(status, f"forced {status}")
        if path.startswith("/api/models"):
            if hub.delay:
                hub._stopping.wait(hub.delay)
            if req.method not in ("GET", "HEAD"):
                raise _error(404, "Not Found")
            if path.rstrip("/") == "/api/models":
                return self._list_models(req)
            return self._model_api(req, path[len("/api/models/"):])
        if path.startswith("/cdn/"):
            return self._cdn(req, raw_path)
        if "/resolve/" in path and req.method in ("GET", "HEAD"):
            return self._resolve(req, raw_path)
        raise _error(404, "Not Found")

    def _repo(self, repo_id: str, req: Request) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            raise _error(404, "Repository not found", "RepoNotFound")
        if repo.info.get("private") and self._token(req) not in self.hub.tokens:
            raise _error(401, "Repository not found", "RepoNotFound")  # what the Hub answers for private repos
        for sub, status in list(repo.fail.items()):
            if sub in req.path:
                raise _error(status, f"forced {status}")
        return repo

    def _check_revision(self, repo: Repo, rev: str) -> None:
        if rev not in ("main", repo.sha):
            raise _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _check_gate(self, repo: Repo, req: Request) -> None:
        if not repo.gated:
            return
        token = self._token(req)
        if token is None:
            raise _error(401, f"Access to model {repo.id} is restricted. You must have access to it and be "
                              "authenticated to access it. Please log in.", "GatedRepo")
        if token not in self.hub.tokens:
            raise _error(403, f"Access to model {repo.id} is restricted and you are not in the authorized list. "
                              f"Visit {self.hub.url}/{repo.id} to ask for access.", "GatedRepo")

    # -- /api/models ----------------------------------------------------------------------------------------------------
    def _list_models(self, req: Request) -> _Response:
        q = req.query
        authed = self._token(req) in self.hub.tokens
        models = [r.info for r in self.hub.repos.values() if authed or not r.info.get("private")]
        if q.get("search"):
            s = q["search"][-1].lower()
            models = [m for m in models if s in m["id"].lower()]
        if q.get("author"):
            a = q["author"][-1].lower()
            models = [m for m in models if (m.get("author") or "").lower() == a or m["id"].lower().startswith(a + "/")]
        filters = q.get("filter", []) + q.get("pipeline_tag", [])
        for f in filters:
            models = [m for m in models if f in (m.get("tags") or []) or f in (m.get("pipeline_tag"), m.get("library_name"))]
        if "gated" in q:
            want = _truthy(q["gated"])
            models = [m for m in models if bool(m.get("gated")) == want]
        if q.get("sort"):
            key = q["sort"][-1]
            if key not in SORT_KEYS:
                raise _error(400, f"Invalid sort key {key!r}")
            descending = (q.get("direction") or ["-1"])[-1] != "1"
            blank = "" if key in ("lastModified", "createdAt") else 0
            models = sorted(models, key=lambda m: m.get(key) or blank, reverse=descending)
        if q.get("limit"):
            models = models[: int(q["limit"][-1])]
        start = int((q.get("cursor") or ["0"])[-1])
        page = models[start: start + self.hub.page_size]
        headers = {}
        if start + self.hub.page_size < len(models):
            nq = {k: v for k, v in q.items() if k != "cursor"}
            nq["cursor"] = [str(start + self.hub.page_size)]
            headers["Link"] = f'<{self.hub.url}/api/models?{urlencode(nq, doseq=True)}>; rel="next"'
        expand = q.get("expand", []) + q.get("expand[]", [])
        if expand:
            if _truthy(q.get("full")) or _truthy(q.get("cardData")) or _truthy(q.get("config")):
                raise _error(400, "expand cannot be combined with full, cardData or config")
            fields = ("_id", "id", *expand)
        else:
            fields = LIST_FULL_FIELDS if _truthy(q.get("full")) else LIST_FIELDS
            if _truthy(q.get("cardData")):
                fields += ("cardData",)
            if _truthy(q.get("config")):
                fields += ("config",)
        out = []
        for m in page:
            item = {k: m[k] for k in fields if k in m}
            if "siblings" in item:
                item["siblings"] = [{"rfilename": s["rfilename"]} for s in item["siblings"]]
            out.append(item)
        return _json(out, **headers)

    def _model_api(self, req: Request, rest: str) -> _Response:
        parts = rest.split("/")
        if len(parts) >= 2 and parts[1] not in ("revision", "safetensors-metadata", "tree", "refs"):
            repo_id, tail = "/".join(parts[:2]), parts[2:]
        else:
            repo_id, tail = parts[0], parts[1:]
        repo = self._repo(repo_id, req)
        if tail and tail[0] == "safetensors-metadata":
            return self._sharded_metadata(repo, req, "/".join(tail[1:]))
        if tail and tail[0] == "tree" and len(tail) >= 2:
            return self._tree(repo, tail[1], req)
        if tail and tail[0] == "revision" and len(tail) >= 2:
            self._check_revision(repo, "/".join(tail[1:]))
        elif tail:
            raise _error(404, "Not Found")
        info = repo.info
        q = req.query
        expand = q.get("expand", []) + q.get("expand[]", [])
        if expand:
            out = {k: info[k] for k in ("_id", "id", *expand) if k in info}
        else:
            out = {k: v for k, v in info.items() if k != "securityRepoStatus"}
        if _truthy(q.get("securityStatus")):
            out["securityRepoStatus"] = info.get("securityRepoStatus", {"scansDone": True, "filesWithIssues": []})
        if "siblings" in out:
            siblings = []
            for s in out["siblings"]:
                s = dict(s)
                content = repo.files.get(s["rfilename"])
                if _truthy(q.get("blobs")) and content is not None:
                    s.setdefault("blobId", _git_blob_sha1(content))
                    s.setdefault("size", len(content))
                    if _is_lfs(s["rfilename"], content):
                        s.setdefault("lfs", {"size": len(content), "sha256": _sha256(content), "pointerSize": 134})
                elif not _truthy(q.get("blobs")):
                    s = {"rfilename": s["rfilename"]}
                siblings.append(s)
            out["siblings"] = siblings
        return _json(out)

    def _tree(self, repo: Repo, rev: str, req: Request) -> _Response:
        """Every file (and folder) of the repo at `rev`, as `list_repo_tree(recursive=True)` reads them."""
        self._check_revision(repo, unquote(rev))
        entries, folders = [], set()
        for name, content in sorted(repo.files.items()):
            parts = name.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
            entry = {"type": "file", "oid": _git_blob_sha1(content), "size": len(content), "path": name}
            if _is_lfs(name, content):
                entry["lfs"] = {"oid": _sha256(content), "size": len(content), "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
        return _json(entries)

    def _sharded_metadata(self, repo: Repo, req: Request, filename: str) -> _Response:
        self._check_gate(repo, req)
        if filename not in repo.files:
            raise _error(404, f"{filename} does not exist on main", "EntryNotFound")
        index = json.loads(repo.files[filename])
        shards = sorted(set(index.get("weight_map", {}).values()))
        headers = {s: safetensors_header(repo.files[s]) for s in shards if s in repo.files}
        return _json({"index": {k: v for k, v in index.items() if k != "weight_map"}, "headers": headers})

    # -- files ----------------------------------------------------------------------------------------------------------
    def _resolve(self, req: Request, raw_path: str) -> _Response:
        head, _, tail = raw_path.lstrip("/").partition("/resolve/")
        repo_id = unquote(head)
        rev_raw, _, filename_raw = tail.partition("/")
        rev, filename = unquote(rev_raw), unquote(filename_raw)
        repo = self._repo(repo_id, req)
        self._check_revision(repo, rev)
        self._check_gate(repo, req)
        commit = {"X-Repo-Commit": repo.sha}
        if filename not in repo.files:
            raise _error(404, f"Entry not found: {filename}", "EntryNotFound", **commit)
        content = repo.files[filename]
        etag = _etag(filename, content)
        headers = {**commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes", "Content-Type": _mime(filename)}
        if _is_lfs(filename, content):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(content))})
            if self.hub.redirect_lfs:
                host = f"localhost:{self.hub.port}"
                loc = f"http://{host}/cdn/{quote(repo.id)}/{repo.sha}/{quote(filename)}"
                raise _Response(302, b"", {**headers, "Location": loc, "Content-Type": "text/plain"})
        return self._serve(req, content, headers)

    def _cdn(self, req: Request, raw_path: str) -> _Response:
        parts = raw_path[len("/cdn/"):].split("/")
        if len(parts) < 4:
            raise _error(404, "Not Found")
        repo = self._repo(unquote("/".join(parts[:2])), req)
        filename = unquote("/".join(parts[3:]))
        if parts[2] != repo.sha or filename not in repo.files:
            raise _error(404, "Not Found")
        content = repo.files[filename]
        return self._serve(req, content, {"ETag": f'"{_etag(filename, content)}"', "Accept-Ranges": "bytes",
                                          "Content-Type": _mime(filename)})

    def _serve(self, req: Request, content, headers: dict) -> _Response:
        size = len(content)
        rng = req.headers.get("range")
        if rng and req.method == "GET":
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if not m or (m.group(1) == "" and m.group(2) == ""):
                raise _error(416, "Invalid range", **{"Content-Range": f"bytes */{size}"})
            if m.group(1) == "":  # suffix range: last N bytes
                start, stop = max(size - int(m.group(2)), 0), size
            else:
                start = int(m.group(1))
                stop = min(int(m.group(2)) + 1, size) if m.group(2) else size
            if start >= size or start >= stop:
                raise _error(416, "Range not satisfiable", **{"Content-Range": f"bytes */{size}"})
            headers = {**headers, "Content-Range": f"bytes {start}-{stop - 1}/{size}"}
            return _Response(206, _body(content, start, stop), headers)
        return _Response(200, _body(content, 0, size), headers)


def _body(content, start: int, stop: int):
    if isinstance(content, VirtualFile) and stop - start > VIRTUAL_THRESHOLD:
        return (content, start, stop)  # streamed by the handler
    return _read(content, start, stop)


def _mime(filename: str) -> str:
    if filename.endswith(".json"):
        return "application/json; charset=utf-8"
    if filename.endswith((".md", ".txt")):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


# ---------------------------------------------------------------------------------------------------------------------
# Client set-up for tests
# ---------------------------------------------------------------------------------------------------------------------
def use_fake_hub(monkeypatch, home, hub: FakeHub | None = None) -> None:
    """Make an already imported `huggingface_hub` usable against a local server (pytest `monkeypatch`, a temp dir).

    The client reads these once at import, so setting environment variables in a test is not enough:
    HF_HUB_OFFLINE (tests/conftest.py sets it to 1), HF_HUB_DISABLE_TELEMETRY (when off, every request first fetches
    `{HF_ENDPOINT}/api/agent-harnesses`), HF_HOME / HF_HUB_CACHE / token path. With `hub`, `HfApi()` and
    `hf_hub_download` default to `hub.url` (constants.ENDPOINT).
    """
    import os

    from huggingface_hub import constants

    home = os.fspath(home)
    values = {
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": home,
        "HF_HUB_CACHE": os.path.join(home, "hub"),
        "HF_TOKEN_PATH": os.path.join(home, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
        "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
    }
    if hub is not None:
        # Patch both: hf_hub_url formats the import-time template and swaps in `endpoint=` only when the URL starts
        # with constants.ENDPOINT, so patching ENDPOINT alone would send every download to huggingface.co.
        values["ENDPOINT"] = hub.url
        values["HUGGINGFACE_CO_URL_TEMPLATE"] = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        from huggingface_hub import hf_api

        # the module-level client behind `huggingface_hub.model_info` & co. (diffusers calls them) fixed its endpoint at import
        monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
    for name, value in values.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    monkeypatch.setenv("HF_HOME", home)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------------------------------------------------
# Self-check with the real client: python tests/hubserver.py
# ---------------------------------------------------------------------------------------------------------------------
def _llama_tensors(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv_heads: int,
                   dtype: str = "BF16") -> dict[str, tuple[str, tuple[int, ...]]]:
    hd = hidden // heads
    t = {"model.embed_tokens.weight": (dtype, (vocab, hidden))}
    for i in range(layers):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": (dtype, (hidden,)),
              p + "self_attn.q_proj.weight": (dtype, (heads * hd, hidden)),
              p + "self_attn.k_proj.weight": (dtype, (kv_heads * hd, hidden)),
              p + "self_attn.v_proj.weight": (dtype, (kv_heads * hd, hidden)),
              p + "self_attn.o_proj.weight": (dtype, (hidden, heads * hd)),
              p + "post_attention_layernorm.weight": (dtype, (hidden,)),
              p + "mlp.gate_proj.weight": (dtype, (inter, hidden)),
              p + "mlp.up_proj.weight": (dtype, (inter, hidden)),
              p + "mlp.down_proj.weight": (dtype, (hidden, inter))}
    t |= {"model.norm.weight": (dtype, (hidden,)), "lm_head.weight": (dtype, (vocab, hidden))}
    return t


def _numel(tensors) -> int:
    total = 0
    for _, shape in tensors.values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def _self_check() -> None:  # noqa: C901 - a linear script
    import os
    import sys
    import tempfile

    home = tempfile.mkdtemp(prefix="fakehub-home-")
    os.environ["HF_HOME"] = home  # read once, at import
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "0"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        os.environ.pop(var, None)
    import huggingface_hub
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub import errors as E

    print("huggingface_hub", huggingface_hub.__version__)
    cfg = dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2)
    tensors = _llama_tensors(32000, 256, 688, 2, 4, 2)
    weights = make_safetensors(tensors, metadata={"format": "pt"})
    assert isinstance(weights, VirtualFile), "tiny llama with a 32k vocab is > 1 MiB -> virtual"
    readme = b"---\nlicense: apache-2.0\nlanguage:\n- en\ndatasets:\n- acme/corpus\nbase_model: meta-llama/Llama-2-7b\n" \
             b"pipeline_tag: text-generation\n---\n# Tiny llama\n"
    llama = Repo("acme/tiny-llama", {"pipeline_tag": "text-generation", "library_name": "transformers",
                                     "downloads": 500, "likes": 7, "lastModified": "2024-05-01T00:00:00.000Z"},
                 {"config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", **cfg}).encode(),
                  "README.md": readme,
                  "tokenizer_config.json": json.dumps({"model_max_length": 4096, "bos_token": "<s>"}).encode(),
                  "model.safetensors": weights})
    gated = Repo("acme/gated-llama", {"pipeline_tag": "text-generation", "library_name": "transformers",
                                      "downloads": 9000, "likes": 1, "gated": "manual"},
                 {"config.json": b'{"model_type": "llama"}',
                  "model.safetensors": make_safetensors({"w": ("F32", (4, 4))})})
    shard_tensors = _llama_tensors(32000, 512, 1376, 4, 8, 8)
    names = list(shard_tensors)
    shards = {"model-00001-of-00002.safetensors": make_safetensors({k: shard_tensors[k] for k in names[:20]}),
              "model-00002-of-00002.safetensors": make_safetensors({k: shard_tensors[k] for k in names[20:]})}
    sharded = Repo("other/sharded-llama", {"pipeline_tag": "text-generation", "library_name": "transformers",
                                           "downloads": 100, "likes": 50},
                   {"config.json": b'{"model_type": "llama"}', "model.safetensors.index.json": make_index(shards),
                    **shards})
    many = {f"t.{i:05d}.weight": ("F16", (8, 8)) for i in range(3000)}  # header > 100 kB -> a 2nd range read
    big_header = Repo("other/many-tensors", {"library_name": "transformers", "pipeline_tag": "feature-extraction"},
                      {"model.safetensors": make_safetensors(many)})
    # Some filler repos to exercise pagination.
    filler = [Repo(f"filler/m{i}", {"library_name": "timm", "downloads": i}) for i in range(5)]

    with FakeHub([llama, gated, sharded, big_header, *filler]) as hub:
        api = HfApi(endpoint=hub.url, token=False)

        # list_models -----------------------------------------------------------------------------------------------
        got = list(api.list_models(search="LLAMA", sort="downloads", limit=10))
        print("list search=LLAMA sort=downloads:", [m.id for m in got])
        assert [m.id for m in got] == ["acme/gated-llama", "acme/tiny-llama", "other/sharded-llama"]
        r = hub.requests[-1]
        print("  query sent:", r.query)
        got = list(api.list_models(author="acme", filter=["text-generation", "license:apache-2.0", "en"],
                                   pipeline_tag="text-generation", cardData=True, full=True))
        print("list author/filter/pipeline_tag/cardData/full:", [(m.id, m.card_data and m.card_data.license,
                                                               m.sha is not None) for m in got])
        assert [m.id for m in got] == ["acme/tiny-llama"] and got[0].card_data.license == "apache-2.0"
        print("  query sent:", hub.requests[-1].query)
        got = list(api.list_models(filter="transformers", sort="likes", limit=2,
                                   expand=["safetensors", "cardData", "likes", "gated", "config"]))
        print("list expand:", [(m.id, m.likes, m.safetensors and m.safetensors.total, m.gated) for m in got])
        assert [m.id for m in got] == ["other/sharded-llama", "acme/tiny-llama"]
        assert got[1].safetensors.total == _numel(tensors) and got[1].downloads is None  # not expanded
        print("  query sent:", hub.requests[-1].query)
        hub.page_size = 2
        hub.clear()
        got = list(api.list_models(filter="timm"))
        print("pagination page_size=2:", [m.id for m in got], "requests:", len(hub.requests),
              [r.query.get("cursor") for r in hub.requests])
        assert len(got) == 5 and len(hub.requests) == 3
        hub.page_size = 1000

        # model_info --------------------------------------------------------------------------------------------------
        info = api.model_info("acme/tiny-llama")
        print("model_info:", info.id, info.pipeline_tag, info.library_name, info.safetensors, info.card_data.base_model,
              [s.rfilename for s in info.siblings], info.config)
        assert info.safetensors.total == _numel(tensors)
        info = api.model_info("acme/tiny-llama", expand=["safetensors", "downloads"])
        print("model_info expand:", info.downloads, info.safetensors.total, info.likes, "| query",
              hub.requests[-1].query)
        assert info.likes is None
        info = api.model_info("acme/tiny-llama", files_metadata=True, securityStatus=True)
        print("model_info files_metadata+securityStatus:", [(s.rfilename, s.size, bool(s.lfs)) for s in info.siblings],
              info.security_repo_status, "| query", hub.requests[-1].query)
        print("model_info revision=sha:", api.model_info("acme/tiny-llama", revision=llama.sha).sha == llama.sha,
              hub.requests[-1].path)

        # safetensors metadata ------------------------------------------------------------------------------------
        for repo, expected in ((llama, _numel(tensors)), (sharded, _numel(shard_tensors)), (big_header, _numel(many))):
            hub.clear()
            md = api.get_safetensors_metadata(repo.id)
            total = sum(md.parameter_count.values())
            print(f"get_safetensors_metadata {repo.id}: sharded={md.sharded} params={md.parameter_count} "
                  f"== {expected}: {total == expected}; {len(hub.requests)} requests:",
                  [(r.method, r.path.rsplit('/', 1)[-1], r.headers.get('range'), r.status) for r in hub.requests])
            assert total == expected and not hub.full_downloads()
        hub.clear()
        md = api.get_sharded_safetensors_metadata(sharded.id)
        print("get_sharded_safetensors_metadata:", sum(md.parameter_count.values()) == _numel(shard_tensors),
              len(hub.requests), "request")

        # hf_hub_download -------------------------------------------------------------------------------------------
        cache = os.path.join(home, "cache")
        hub.clear()
        path = hf_hub_download("acme/tiny-llama", "config.json", endpoint=hub.url, cache_dir=cache, token=False)
        assert json.load(open(path))["hidden_size"] == 256
        print("hf_hub_download config.json ->", path[len(home):], [(r.method, r.status) for r in hub.requests])
        hub.clear()
        path2 = api.hf_hub_download("acme/tiny-llama", "config.json", cache_dir=cache)
        print("  again (cached):", path2 == path, [(r.method, r.status) for r in hub.requests])
        hub.clear()
        api.hf_hub_download("acme/tiny-llama", "config.json", cache_dir=cache, revision=llama.sha)
        print("  again with revision=<commit sha>:", len(hub.requests), "requests")
        p = api.hf_hub_download("acme/tiny-llama", "README.md", cache_dir=cache)
        api.hf_hub_download("acme/tiny-llama", "tokenizer_config.json", cache_dir=cache)
        print("  README.md starts:", open(p).read(20).replace("\n", "|"))

        # errors --------------------------------------------------------------------------------------------------
        def expect(label, fn, cls):
            hub.clear()
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                statuses = [(r.method, r.status) for r in hub.requests]
                print(f"{label}: {type(e).__name__} (mro: {[c.__name__ for c in type(e).__mro__[1:4]]}) {statuses}")
                assert isinstance(e, cls), (label, type(e))
                return e
            raise AssertionError(f"{label}: no exception")

        expect("model_info unknown repo", lambda: api.model_info("acme/nope"), E.RepositoryNotFoundError)
        expect("model_info bad revision", lambda: api.model_info("acme/tiny-llama", revision="v9"),
               E.RevisionNotFoundError)
        expect("download unknown repo", lambda: api.hf_hub_download("acme/nope", "config.json", cache_dir=cache),
               E.RepositoryNotFoundError)
        expect("download missing file", lambda: api.hf_hub_download("acme/tiny-llama", "nope.json", cache_dir=cache),
               E.RemoteEntryNotFoundError)
        expect("download bad revision",
               lambda: api.hf_hub_download("acme/tiny-llama", "config.json", revision="v9", cache_dir=cache),
               E.RevisionNotFoundError)
        print("model_info on gated repo without token works:", api.model_info(gated.id).gated)
        expect("download gated, no token", lambda: api.hf_hub_download(gated.id, "config.json", cache_dir=cache),
               E.GatedRepoError)
        expect("download gated, wrong token",
               lambda: hf_hub_download(gated.id, "config.json", endpoint=hub.url, token="hf_bad", cache_dir=cache),
               E.GatedRepoError)
        path = hf_hub_download(gated.id, "config.json", endpoint=hub.url, token="hf_good", cache_dir=cache)
        print("download gated, good token: ok", os.path.basename(path))
        expect("safetensors gated, no token", lambda: api.get_safetensors_metadata(gated.id), E.GatedRepoError)
        print("safetensors gated, good token:",
              HfApi(endpoint=hub.url, token="hf_good").get_safetensors_metadata(gated.id).parameter_count)
        expect("safetensors unknown repo", lambda: api.get_safetensors_metadata("acme/nope"),
               E.NotASafetensorsRepoError)
        expect("safetensors no weights", lambda: api.get_safetensors_metadata(filler[0].id),
               E.NotASafetensorsRepoError)
        llama.fail["tokenizer_config.json"] = 403
        expect("download forced 403", lambda: api.hf_hub_download(llama.id, "tokenizer_config.json",
                                                                  cache_dir=os.path.join(home, "c2")),
               E.LocalEntryNotFoundError)  # a HEAD error without X-Error-Code, other than 401, becomes this
        llama.fail.clear()
        hub.fail["/api/models/acme/tiny-llama"] = 500
        expect("model_info forced 500", lambda: api.model_info(llama.id), E.HfHubHTTPError)
        hub.fail.clear()

        # 429 -----------------------------------------------------------------------------------------------------
        hub.rate_limit = 1
        expect("model_info 429", lambda: api.model_info(llama.id), E.HfHubHTTPError)
        for label, fn in (("list_models", lambda: list(api.list_models(search="tiny"))),
                          ("hf_hub_download", lambda: api.hf_hub_download(llama.id, "config.json",
                                                                          cache_dir=os.path.join(home, "c3"))),
                          ("get_safetensors_metadata", lambda: api.get_safetensors_metadata(llama.id))):
            hub.clear()
            hub.rate_limit = 1
            t0 = time.monotonic()
            try:
                fn()
                outcome = "ok"
            except Exception as e:  # noqa: BLE001
                outcome = type(e).__name__
            print(f"429 then success, {label}: {outcome} after {time.monotonic() - t0:.1f}s;",
                  [(r.method, r.status) for r in hub.requests])

        # CDN redirect of LFS files to another origin ---------------------------------------------------------------
        hub.redirect_lfs = True
        hub.clear()
        md = HfApi(endpoint=hub.url, token="hf_good").get_safetensors_metadata(llama.id)
        print("redirect_lfs get_safetensors_metadata:", sum(md.parameter_count.values()) == _numel(tensors),
              [(r.method, r.host.split(":")[0], r.path.rsplit("/", 1)[-1], r.status, "authorization" in r.headers)
               for r in hub.requests])
        hub.redirect_lfs = False

        # delay / timeouts ----------------------------------------------------------------------------------------
        hub.delay = 1.0
        t0 = time.monotonic()
        expect("model_info delay=1 timeout=0.2", lambda: api.model_info(llama.id, timeout=0.2), Exception)
        print(f"  (took {time.monotonic() - t0:.1f}s)")
        hub.delay = 0.0
        print("agent-harnesses requests:", len(hub.find(contains="agent-harnesses")))
    import shutil

    shutil.rmtree(home, ignore_errors=True)
    print("OK")
    sys.stdout.flush()


if __name__ == "__main__":
    _self_check()
