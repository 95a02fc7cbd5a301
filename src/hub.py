"""Hugging Face Hub discovery: search, evaluate and plan fine-tuning from metadata only.

Everything goes through `huggingface_hub.HfApi` (never hand-written HTTP). Weights are never
downloaded: parameter counts come from the Hub's safetensors metadata (header reads), else from
`config.json` through our estimator. Tokens come from the usual HF places (HF_TOKEN, the cached
login) and are never printed. With HF_HUB_OFFLINE=1, search, evaluate and `estimate ORG/NAME` answer
from the local HF cache and the shipped reference architectures, and say so; with no network they fail
at once with one line (huggingface_hub's own retries of failed connections are bounded to none).
`plan_finetune` also takes a model directory on this machine, and needs no Hub for it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from archsmith import checkpoints, modalities, pipelines
from archsmith.errors import ArchsmithError

# ---- licences as users read them: a class per Hub license id, presets named for what they allow ------------------
# class -> what it means for a user who ships the model (and its fine-tunes)
LICENSE_CLASSES: dict[str, str] = {
    "permissive": "commercial use allowed; keep the licence text and attribution with the model",
    "copyleft": "commercial use allowed; share-alike: a modified or redistributed model must carry the same licence "
                "(with its source and notice duties; AGPL also for a model served over a network)",
    "restricted-use": "commercial use allowed under the licence's own terms (use restrictions, an acceptable-use policy, "
                      "user-count or naming clauses) that pass on to every derivative: read them",
    "non-commercial": "research / non-commercial use only: no commercial use",
    "unknown": "a licence archsmith does not classify ('other', custom or missing): read the card; not clearance",
}
_OPENRAIL = ("OpenRAIL: open access and commercial use, with use-based restrictions (its Attachment A) that every "
             "derivative and every user must be bound by")
_META_COMMUNITY = ("Llama community licence: commercial use allowed below 700M monthly active users, under Meta's acceptable-use "
          "policy; a derivative's name starts with 'Llama' and it carries the licence")
# license id (as the Hub and model cards spell it) -> (class, what it says when the class alone does not)
LICENSES: dict[str, tuple[str, str | None]] = {
    **{k: ("permissive", None) for k in (
        "apache-2.0", "mit", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "isc", "zlib", "unlicense",
        "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "afl-3.0", "artistic-2.0", "bsl-1.0", "ecl-2.0",
        "ncsa", "postgresql", "wtfpl", "pddl", "odc-by", "cdla-permissive-1.0", "cdla-permissive-2.0", "etalab-2.0")},
    **{k: ("copyleft", None) for k in (
        "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "lgpl-lr", "agpl-3.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
        "mpl-2.0", "epl-1.0", "epl-2.0", "eupl-1.1", "eupl-1.2", "osl-3.0", "cdla-sharing-1.0", "odbl", "gfdl", "ms-pl")},
    **{k: ("restricted-use", _OPENRAIL) for k in (
        "openrail", "openrail++", "bigscience-openrail-m", "creativeml-openrail-m", "bigcode-openrail-m")},
    "bigscience-bloom-rail-1.0": ("restricted-use", "BigScience RAIL 1.0 (BLOOM): commercial use allowed, with use-based "
                                                    "restrictions that every derivative must carry"),
    **{k: ("restricted-use", _META_COMMUNITY) for k in ("llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4")},
    "gemma": ("restricted-use", "Gemma terms of use: commercial use allowed under Google's prohibited-use policy, which "
                                "passes on to derivatives"),
    "deepseek": ("restricted-use", "DeepSeek licence: commercial use allowed, with use-based restrictions (OpenRAIL-style) "
                                   "that every derivative must carry"),
    "tongyi-qianwen": ("restricted-use", "Qwen (Tongyi Qianwen) licence: commercial use allowed below 100M monthly active "
                                         "users; above, a licence from Alibaba Cloud"),
    "cc-by-nd-4.0": ("restricted-use", "CC BY-ND: commercial use of the unmodified model only; a fine-tune may not be shared"),
    **{k: ("non-commercial", None) for k in (
        "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
        "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0")},
    **{k: ("non-commercial", "a research licence: non-commercial research use only") for k in (
        "fair-noncommercial-research-license", "apple-amlr", "apple-ascl", "h-research", "intel-research",
        "deepfloyd-if-license", "c-uda")},
    "other": ("unknown", None), "unknown": ("unknown", None),
}
COMMERCIAL_VERDICT = {"permissive": "yes", "copyleft": "yes", "restricted-use": "restricted", "non-commercial": "no",
                      "unknown": "unknown"}  # the `commercial` field each class gives
# preset -> the classes it allows; presets combine with each other and with license ids in one comma list
LICENSE_PRESETS: dict[str, tuple[str, ...]] = {
    "permissive": ("permissive",),  # no duty beyond keeping the licence and attribution
    "commercial-ok": ("permissive", "restricted-use"),  # commercial use, under use restrictions where the licence has them
    "copyleft-ok": ("permissive", "copyleft"),  # open-source licences, share-alike accepted
}
DEPRECATED_PRESETS = {"commercial": "permissive"}  # old name -> the preset it now stands for (said in `notes`)
SORTS = {"downloads": "downloads", "likes": "likes", "trending": "trending_score", "recent": "last_modified"}
EXPAND = ["author", "cardData", "downloads", "likes", "lastModified", "gated", "pipeline_tag", "library_name", "tags",
          "safetensors", "trendingScore"]
RETRIES = 3  # attempts on HTTP 429 before giving up
BACKOFF_S = 1.0  # first wait after a 429 without Retry-After; doubles each time
TIMEOUT_S = 20.0  # per request
ENRICH_WORKERS = 8  # hits enriched concurrently (header reads are latency-bound)
USABLE = 0.90  # fraction of GPU memory a run may use (CUDA context, fragmentation)
INFERENCE_OVERHEAD = 1.20  # weights -> serving memory: activations, KV cache of a short context, buffers
LORA_FRACTION = 0.01  # LoRA adapters of rank ~16 on all linear layers: ~1% of the parameters
PRECISIONS = ("fp16", "int8", "int4")
AUTO_CLASSES = {task: row.auto_class for task, row in modalities.TASKS.items()}  # task -> transformers Auto class


PREPROCESSOR = "preprocessor_config.json"
CARD_CHARS = 1 << 20  # a model card is read up to 1 MiB: its metadata and the sections we report sit near the top
CARD_BYTES = 16 << 20  # a README.md larger than this is not downloaded at all
JSON_BYTES = 16 << 20  # config.json, tokenizer_config.json, index files: real ones are KiB (a 671B index: ~9 MiB)
CARD_YAML_CHARS = 64 << 10  # card metadata (YAML front matter) beyond 64 KiB is not read; real ones are a few KiB
CARD_SECTIONS = 64  # headings kept from one card
SECTION_CHARS = 2000  # characters kept from one card section
CARD_VALUE_CHARS = 200  # a metadata string (license id, dataset name) is cut to this
CARD_LIST_ITEMS = 32  # items kept from a metadata list (datasets, languages, base models)
COMMIT_ID = re.compile(r"[0-9a-f]{40}")  # a git commit id: the only revision a fine-tuning script is pinned to


class HubError(ArchsmithError):
    """The Hub could not answer: unknown or gated repo, rate limit, timeout, missing file."""


# ---- the client and its errors ----------------------------------------------------------------

def offline() -> bool:
    """What huggingface_hub itself will do (it reads HF_HUB_OFFLINE once, at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def api(endpoint: str | None = None, token: str | bool | None = None):
    """An HfApi; endpoint None uses HF_ENDPOINT / the public Hub, token None the usual HF places."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)  # HF_ENDPOINT read per call, not at import


def call(fn: Callable[..., Any], *args, what: str, **kwargs) -> Any:
    """Run one Hub call; retry HTTP 429 with backoff; turn client errors into one-line HubErrors naming `what`.

    A connection that cannot be made, or a request that times out, fails at once (see `_bound_client_retries`)."""
    from huggingface_hub import errors

    _bound_client_retries()
    for attempt in range(RETRIES):
        inside = _IN_CALL.set(True)
        try:
            return fn(*args, **kwargs)
        except errors.GatedRepoError:
            raise HubError(what, "is gated: accept its terms on the Hub, then log in (`hf auth login`) or set HF_TOKEN") from None
        except errors.RepositoryNotFoundError:
            raise HubError(what, "not found on the Hub (or private without access)") from None
        except errors.LocalEntryNotFoundError as exc:
            http = exc.__cause__  # hf_hub_download wraps a failed HEAD (403, 429, 5xx, no network) this way
            if not isinstance(http, errors.HfHubHTTPError):
                raise HubError(what, _unreachable(http)) from None
        except errors.EntryNotFoundError as exc:
            raise HubError(what, f"file not in the repo: {_filename(exc)}") from None
        except errors.NotASafetensorsRepoError:
            raise HubError(what, "has no safetensors weights (model.safetensors or its index)") from None
        except errors.OfflineModeIsEnabled:
            raise HubError(what, "HF_HUB_OFFLINE is set: the Hub is not asked") from None
        except errors.HfHubHTTPError as exc:
            http = exc
        except Exception as exc:  # httpx timeouts and connection errors come through under several names
            name = type(exc).__name__
            if "Timeout" in name or "Connect" in name or isinstance(exc, OSError):
                raise HubError(what, _unreachable(exc)) from None
            if isinstance(exc, (ValueError, TypeError, KeyError)):  # an answer that is not the JSON it should be
                raise HubError(what, f"the Hub's answer is malformed ({name}: {str(exc)[:100]})") from None
            raise
        finally:
            _IN_CALL.reset(inside)
        status = http.response.status_code if http.response is not None else None
        if status == 429 and attempt + 1 < RETRIES:
            time.sleep(_retry_after(http, attempt))
            continue
        if status == 429:
            raise HubError(what, f"rate limited by the Hub (HTTP 429) after {RETRIES} tries; wait and retry") from None
        raise HubError(what, f"the Hub answered HTTP {status}") from None
    raise AssertionError("unreachable")


_IN_CALL: ContextVar[bool] = ContextVar("archsmith_hub_call", default=False)  # set while `call` runs a Hub request


def _bound_client_retries() -> None:
    """Inside `call`, huggingface_hub does not retry a connection that cannot be made or a request that timed out.

    huggingface_hub 2.4 retries `httpx2` network errors and timeouts 5 times, waiting 1, 2, 4, 8, 8 s and logging two
    warnings each time (`utils/_http.py: _http_backoff_base`, reached by `list_models` through `utils/_pagination.py`
    and by `hf_hub_download`'s HEAD when no cached copy exists): 24 s of "Retrying" lines before the error with no
    network. Its wrappers take `retry_on_exceptions=`, but `list_models` and `hf_hub_download` do not pass it through,
    so this wraps the one function they all reach: during `call` (a context variable, so other users of
    huggingface_hub in the process and other threads keep the library's behaviour), only a connection dropped in the
    middle of an answer is retried. Retries on HTTP status codes (429, 5xx) stay as the library has them.
    """
    import httpx2
    from huggingface_hub.utils import _http

    base = getattr(_http, "_http_backoff_base", None)
    if base is None or getattr(base, "archsmith_bounded", False):  # None: another huggingface_hub layout; calls still work
        return
    mid_answer = (httpx2.ReadError, httpx2.WriteError, httpx2.CloseError, httpx2.RemoteProtocolError)

    def bounded(*args, **kwargs):
        if _IN_CALL.get():
            given = kwargs.get("retry_on_exceptions", _http._DEFAULT_RETRY_ON_EXCEPTIONS)
            given = (given,) if isinstance(given, type) else tuple(given)
            # ConnectError and every timeout are left out; a given type that is none of these (or their parents) stays
            kwargs["retry_on_exceptions"] = tuple(e for e in mid_answer if issubclass(e, given))
        return base(*args, **kwargs)

    bounded.archsmith_bounded = True
    _http._http_backoff_base = bounded


def _unreachable(cause: BaseException | None) -> str:
    """Why no answer came: offline without a cached copy, a timeout, or no connection."""
    if offline():
        return "HF_HUB_OFFLINE is set and the file is not in the local HF cache"
    if cause is not None and "Timeout" in type(cause).__name__:
        return "the Hub did not answer in time"
    return "cannot reach the Hub (no network?); set HF_HUB_OFFLINE=1 to use the local HF cache and the reference architectures"


def _retry_after(exc, attempt: int) -> float:
    header = exc.response.headers.get("Retry-After") if exc.response is not None else None
    try:
        return min(float(header), 30.0)
    except (TypeError, ValueError):
        return BACKOFF_S * 2**attempt


def _filename(exc: Exception) -> str:
    match = re.search(r"/resolve/[^/]+/(\S+)", str(exc))
    return match.group(1).rstrip(".") if match else "the requested file"


# ---- memory from a parameter count ------------------------------------------------------------

def memory_table(params: int, gpu: dict[str, Any] | None) -> dict[str, Any]:
    """Weights at each precision, serving and fine-tuning memory, and whether each fits `gpu`."""
    from archsmith.estimate import DTYPE_BYTES, INT4_GROUP, INT4_GROUP_OVERHEAD

    weights = {p: int(params * DTYPE_BYTES[p]) for p in PRECISIONS}
    weights["int4"] += math.ceil(params / INT4_GROUP) * INT4_GROUP_OVERHEAD
    adapters = int(params * LORA_FRACTION)
    needs = {f"run_{p}": int(w * INFERENCE_OVERHEAD) for p, w in weights.items()}
    needs.update({  # lower bounds: activations of long sequences come on top
        "finetune_full": params * 16,  # bf16 weights + grads, fp32 master + AdamW m, v
        # frozen base as served (same overhead) + adapters with their gradients, fp32 master and AdamW state
        "finetune_lora": needs["run_fp16"] + adapters * 16,
        "finetune_qlora": needs["run_int4"] + adapters * 16,
    })
    table: dict[str, Any] = {"weights_bytes": weights, "needs_bytes": needs}
    if gpu is not None:
        from archsmith.gpus import memory_bytes

        usable = int(memory_bytes(gpu) * USABLE)
        table["gpu"] = gpu["id"]
        table["usable_bytes"] = usable
        table["fits"] = {k: v <= usable for k, v in needs.items()}
    return table


# ---- search -----------------------------------------------------------------------------------

CONSTRAINTS = ("task", "library", "author", "language", "license", "max_params", "gpu")  # in the order they are reported


@dataclass
class Hit:
    id: str
    task: str | None
    library: str | None
    languages: list[str] | None  # the card's `language` field; None: not known (offline, no card in the cache)
    license: str | None
    commercial: str  # yes | restricted | no | unknown
    gated: bool | None  # None: not known (offline)
    downloads: int | None  # None offline
    likes: int | None
    last_modified: str | None
    params: int | None
    params_source: str
    memory: dict[str, Any] | None
    source: str = "the Hub"  # where this hit's metadata comes from
    meets_constraints: bool = True  # every given constraint was checked and is met
    checked: list[str] = field(default_factory=list)  # constraints this hit's metadata could be checked against
    violated: list[str] = field(default_factory=list)  # checked and not met
    unchecked: list[str] = field(default_factory=list)  # given, but the metadata cannot tell (never counted as met)
    reasons: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rank: int = 0
    score: dict[str, Any] | None = None  # with sort "score:TASK": the score the card reports for TASK (None: it gives none)
    license_class: str = "unknown"  # permissive | copyleft | restricted-use | non-commercial | unknown (LICENSE_CLASSES)
    tags: list[str] = field(default_factory=list, repr=False)  # the Hub's tags (library and language checks); not reported
    reported: list[dict[str, Any]] = field(default_factory=list, repr=False)  # the card's model-index rows; not reported

    def __post_init__(self) -> None:
        self.license_class = license_class(self.license)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("tags", "reported")}


def license_class(license: str | None) -> str:
    """permissive | copyleft | restricted-use | non-commercial | unknown, from the LICENSES table."""
    return LICENSES.get(str(license).lower(), ("unknown", None))[0] if license else "unknown"


def license_terms(license: str | None) -> str:
    """One line on what `license` allows: its own note, else its class's."""
    cls, note = LICENSES.get(str(license).lower(), ("unknown", None)) if license else ("unknown", None)
    return note or LICENSE_CLASSES[cls]


def commercial_use(license: str | None) -> str:
    """yes (permissive, copyleft) | restricted (restricted-use) | no (non-commercial) | unknown."""
    return COMMERCIAL_VERDICT[license_class(license)]


def license_allowed(license: str | None, allowed: tuple[str, ...] | None) -> bool:
    return allowed is None or (license or "").lower() in allowed


def resolve_licenses(license: str | list[str] | None, notes: list[str] | None = None) -> tuple[str, ...] | None:
    """A comma list (or list) of presets and license ids -> the allowed ids; None -> no filter.

    permissive, commercial-ok and copyleft-ok expand to every id of their classes (LICENSE_PRESETS); the old preset
    name `commercial` stands for `permissive`, with a deprecation line appended to `notes`."""
    if license is None or license == []:
        return None
    names = [x.strip().lower() for x in (license.split(",") if isinstance(license, str) else license) if x.strip()]
    allowed: list[str] = []
    for name in names:
        if name in DEPRECATED_PRESETS:
            new = DEPRECATED_PRESETS[name]
            if notes is not None:
                notes.append(f"license preset {name!r} is deprecated and now means {new!r} (GPL and other copyleft "
                             f"licences left out); say what you mean: {', '.join(LICENSE_PRESETS)}, or a list of license ids")
            name = new
        if name in LICENSE_PRESETS:
            allowed += [k for k, (cls, _) in LICENSES.items() if cls in LICENSE_PRESETS[name]]
            continue
        if name not in LICENSES and notes is not None:
            notes.append(f"license {name!r:.60} is neither a preset ({', '.join(LICENSE_PRESETS)}) nor a license id "
                         "archsmith knows; matched as given")
        allowed.append(name)
    return tuple(dict.fromkeys(allowed))


def search(query: str | None = None, task: str | None = None, library: str | None = None, author: str | None = None,
           language: str | None = None, license: str | list[str] | None = None, sort: str = "downloads", limit: int = 20,
           gpu: str | None = None, use: str = "run_fp16", max_params: int | None = None, include_rejected: bool = False,
           endpoint: str | None = None, token: str | bool | None = None,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Models that meet every given constraint, ranked by popularity; `include_rejected` adds the others, labelled.
    `progress(message)` hears how far the search is (the listing, then each hit read).

    Online, `limit` models are fetched (the Hub applies task, library, language, author and a single license) and each
    hit is checked again against every constraint; offline, the local HF cache and the shipped reference architectures
    are checked and the best `limit` returned. Each hit says which constraints were checked, which it violates and
    which its metadata cannot tell (`unchecked`: such a hit never meets the constraints).
    """
    from archsmith.gpus import get_gpu

    score_task = sort[len("score:"):] if sort.startswith("score:") else None
    if score_task is not None and not re.fullmatch(r"[\w.-]{1,64}", score_task):
        raise ArchsmithError("sort", f"score:TASK names a benchmark (letters, digits, _ . -, up to 64); got {sort!r:.80}")
    if score_task is None and sort not in SORTS:
        raise ArchsmithError("sort", f"must be one of {', '.join(SORTS)} or score:TASK; got {sort!r:.80}")
    if not isinstance(limit, int) or not 1 <= limit <= 200:
        raise ArchsmithError("limit", f"must be in [1, 200], got {limit!r}")
    uses = [f"run_{p}" for p in PRECISIONS] + ["finetune_full", "finetune_lora", "finetune_qlora"]
    if use not in uses:
        raise ArchsmithError("use", f"must be one of {', '.join(uses)}; got {use!r}")
    device = get_gpu(gpu) if gpu else None
    notes: list[str] = []
    allowed = resolve_licenses(license, notes)
    given = {"task": task, "library": library, "author": author, "language": language, "license": allowed,
             "max_params": max_params, "gpu": gpu}
    given = {k: v for k, v in given.items() if v not in (None, "")}  # an empty string is no constraint (as before)
    if offline():
        hits = [_local_hit(m, device) for m in local_models() if not query or query.lower() in m.id.lower()]
        source = "offline: the local HF cache and archsmith's reference architectures (HF_HUB_OFFLINE is set)"
    else:
        client = api(endpoint, token)
        # the Hub lists libraries, languages and licenses as plain tags; an allow-list of several cannot be one filter
        tags = [f for f in (library, language, f"license:{allowed[0]}" if allowed and len(allowed) == 1 else None) if f]
        say = progress or (lambda message: None)
        say(f"listing models on {client.endpoint}")
        listing = call(lambda: list(client.list_models(search=query or None, pipeline_tag=task, author=author,
                                                       filter=tags or None, sort=SORTS.get(sort, "downloads"), limit=limit,
                                                       expand=EXPAND)),
                       what="search")
        hits = []
        with ThreadPoolExecutor(max_workers=ENRICH_WORKERS) as pool:
            for hit in pool.map(lambda info: _hit(client, info, device), listing):
                hits.append(hit)
                say(f"reading configs and cards: {len(hits)}/{len(listing)} models")
        source = f"the Hub ({client.endpoint})"
    ranked = rank(hits, given, use, score_task)
    kept = [h for h in ranked if h.meets_constraints]
    results = ranked if include_rejected else kept
    rejected = [h for h in ranked if not h.meets_constraints]
    summary = {"count": len(rejected),
               "violated": {c: n for c in CONSTRAINTS if (n := sum(c in h.violated for h in rejected))},
               "unchecked": {c: n for c in CONSTRAINTS if (n := sum(c in h.unchecked for h in rejected))}}
    return {"source": source, "offline": offline(), "query": {"query": query, "task": task, "library": library,
            "author": author, "language": language, "license": list(allowed) if allowed else None, "gpu": gpu, "use": use,
            "max_params": max_params, "sort": sort, "limit": limit, "include_rejected": include_rejected},
            "constraints": [c for c in CONSTRAINTS if c in given], "considered": len(ranked), "rejected": summary,
            "message": _rejection_message(len(ranked), len(kept), summary, include_rejected), "notes": notes,
            "results": [h.to_dict() for h in results[:limit]]}


def _rejection_message(considered: int, kept: int, rejected: dict[str, Any], include_rejected: bool) -> str | None:
    """One line on what the filters removed, e.g. 'no model meets every constraint: 4 of 4 rejected (license 3, ...)'."""
    if considered == 0:
        return "no model matches the query"
    if not rejected["count"]:
        return None
    by = [f"{c} {n}" for c, n in rejected["violated"].items()] + [f"{c} not checkable {n}" for c, n in rejected["unchecked"].items()]
    line = f"{rejected['count']} of {considered} models rejected ({', '.join(by)})"
    if kept == 0:
        line = "no model meets every constraint: " + line
    return line + ("" if include_rejected else "; include_rejected (--include-rejected) lists them, labelled")


def _hit(client, info, device) -> Hit:
    """One listing entry, enriched; an odd entry gets `problems`, never an exception."""
    from archsmith.baselines import reported_scores

    card = info.card_data.to_dict() if getattr(info, "card_data", None) else {}
    lic = _license(card)
    hit = Hit(id=info.id, task=info.pipeline_tag, library=info.library_name, languages=_languages(card) or [], license=lic,
              commercial=commercial_use(lic), gated=bool(info.gated),
              downloads=info.downloads or 0, likes=info.likes or 0,
              last_modified=info.last_modified.isoformat() if info.last_modified else None,
              params=None, params_source="unknown", memory=None, tags=list(info.tags or []),
              reported=reported_scores(card)[0])
    try:
        hit.params, hit.params_source = _params(client, info)
    except ArchsmithError as exc:
        hit.problems.append(str(exc))
    if hit.params:
        hit.memory = memory_table(hit.params, device)
    return hit


def _license(card: dict[str, Any]) -> str | None:
    """The card's license id; of a list, the first (the Hub shows the first too); None unless it is a string."""
    lic = card.get("license")
    lic = (lic[0] if lic else None) if isinstance(lic, list) else lic
    return lic[:CARD_VALUE_CHARS] if isinstance(lic, str) else None


def _languages(card: dict[str, Any]) -> list[str] | None:
    """The card's `language` field as a list of codes; None when the card has none."""
    value = card.get("language")
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else None


def _params(client, info) -> tuple[int | None, str]:
    """From the listing's safetensors summary, else the safetensors headers, else config.json via our estimator."""
    if getattr(info, "safetensors", None) and info.safetensors.total:
        return int(info.safetensors.total), "safetensors metadata"
    try:
        meta = call(client.get_safetensors_metadata, info.id, what=info.id)
        return int(sum(meta.parameter_count.values())), "safetensors header"
    except HubError:
        pass
    from archsmith.estimate import count_params
    from archsmith.hfconfig import spec_from_hf

    cfg = fetch_json(client, info.id, "config.json")
    return count_params(spec_from_hf(cfg))["total"], "config.json (archsmith estimate)"


def check(hit: Hit, given: dict[str, Any], use: str) -> dict[str, tuple[bool | None, str]]:
    """Each given constraint -> (met: True, False, or None when the hit's metadata cannot tell; why not)."""
    def one(name: str, want: Any) -> tuple[bool | None, str]:
        if name == "task":
            return (None, "task not known") if hit.task is None else (hit.task == want, f"task {hit.task}, not {want}")
        if name == "library":
            if hit.library is None and not hit.tags:
                return None, "library not known"
            return want.lower() in {(hit.library or "").lower(), *map(str.lower, hit.tags)}, f"library {hit.library or 'not given'}, not {want}"
        if name == "author":
            return hit.id.lower().startswith(want.lower() + "/"), f"author {hit.id.split('/')[0]}, not {want}"
        if name == "language":
            if hit.languages is None and not hit.tags:
                return None, "languages not known"
            langs = [*(hit.languages or []), *hit.tags]
            return want.lower() in map(str.lower, langs), f"languages {', '.join(hit.languages or []) or 'not given'}, not {want}"
        if name == "license":
            if hit.license is None:
                return None, "license not known"
            return license_allowed(hit.license, want), f"license {hit.license} is not in the allowed list"
        if name == "max_params":
            if hit.params is None:
                return None, "parameter count not known"
            return hit.params <= want, f"{hit.params:,} parameters > max {want:,}"
        if hit.memory is None:  # gpu
            return None, "parameter count not known"
        need, usable = hit.memory["needs_bytes"][use], hit.memory["usable_bytes"]
        return hit.memory["fits"][use], f"{use} needs {need / 2**30:.1f} GiB > {usable / 2**30:.1f} GiB usable on {hit.memory['gpu']}"

    return {name: one(name, want) for name, want in given.items()}


def rank(hits: list[Hit], given: dict[str, Any], use: str, score_task: str | None = None) -> list[Hit]:
    """Hits that meet every constraint first, then (with `score_task`) those whose card reports a score for it, highest
    first, then by downloads and likes; each gets its checks and reasons. A card without the score gets none."""
    from archsmith.baselines import score_for

    for h in hits:
        if score_task is not None:
            h.score = score_for(h.reported, score_task)
        status = check(h, given, use)
        h.checked = [c for c, (ok, _) in status.items() if ok is not None]
        h.violated = [c for c, (ok, _) in status.items() if ok is False]
        h.unchecked = [c for c, (ok, _) in status.items() if ok is None]
        h.meets_constraints = not h.violated and not h.unchecked
        h.reasons = [why for ok, why in status.values() if ok is False] + [f"{c} not checked: {why}" for c, (ok, why) in status.items() if ok is None]
        if h.meets_constraints:
            h.reasons = ["meets every constraint" if given else "no constraints given"]
    scored = sorted(hits, key=lambda h: (not h.meets_constraints, len(h.violated), len(h.unchecked),
                                         score_task is not None and h.score is None, -(h.score or {}).get("fraction", 0),
                                         -(h.downloads or 0), -(h.likes or 0), h.id))
    for i, h in enumerate(scored, 1):
        h.rank = i
        if score_task is not None:
            s = h.score
            h.reasons.append(f"the card reports no score for {score_task}" if s is None else
                             f"{score_task}: {s['metric']} {s['value']:g} ({s['source']}{', verified' if s['verified'] else ''}; "
                             "reported, not measured)")
        if h.downloads is not None:
            h.reasons.append(f"{h.downloads:,} downloads, {h.likes or 0:,} likes")
        if h.gated:
            h.reasons.append("gated: accept the terms on the Hub before downloading")
        if h.license_class in ("restricted-use", "copyleft"):
            h.reasons.append(f"license {h.license} ({h.license_class}): {license_terms(h.license)}")
    return scored


# ---- one model's metadata, and what the machine knows without the Hub (HF cache, shipped catalog)

@dataclass
class ModelMetadata:
    """What evaluate and offline search know about one model without its weights, and where it comes from."""

    id: str
    source: str  # the Hub, the local HF cache, an archsmith reference architecture
    config: dict[str, Any] | None = None
    readme: str = ""
    tokenizer: dict[str, Any] = field(default_factory=dict)
    sha: str | None = None  # the commit read; None for a reference architecture only
    downloads: int | None = None  # None offline
    likes: int | None = None
    task: str | None = None
    library: str | None = None
    languages: list[str] | None = None
    license: str | None = None
    gated: bool | None = None
    params: int | None = None
    params_source: str = "unknown"
    tensor_names: list[str] = field(default_factory=list)
    pipeline: dict[str, Any] | None = None  # a diffusers pipeline's components (archsmith.pipelines)
    checkpoints: dict[str, Any] | None = None  # the weight formats in the repository (archsmith.checkpoints)
    preprocessor: dict[str, Any] | None = None  # preprocessor_config.json: image sizes, normalisation, sampling rate
    problems: list[str] = field(default_factory=list)


CACHE = "local HF cache"
CATALOG = "archsmith reference architecture (its published config.json, shipped with archsmith)"


def local_models(repo_id: str | None = None) -> list[ModelMetadata]:
    """Models in the local HF cache and the shipped reference architectures (only `repo_id` when given).

    A model in both gets the cache's metadata, and from the catalog what the cache lacks (e.g. no card cached)."""
    from archsmith.catalog import reference_architectures, reference_config

    models = {m.id: m for m in _cached_models(repo_id)}
    for row in reference_architectures():
        if repo_id is not None and row["repo"] != repo_id:
            continue
        shipped = ModelMetadata(id=row["repo"], source=CATALOG, config=reference_config(row["name"]), task=row["task"],
                                library=row["library"], languages=row["languages"], license=row["license"], gated=row["gated"],
                                params=row["params"], params_source="published config.json (archsmith estimate)")
        model = models.setdefault(row["repo"], shipped)
        filled = [k for k in ("config", "params", "task", "library", "languages", "license", "gated")
                  if model is not shipped and getattr(model, k) is None and getattr(shipped, k) is not None]
        for k in filled:
            setattr(model, k, getattr(shipped, k))
        if "params" in filled:
            model.params_source = shipped.params_source
        if filled:
            model.source = f"{CACHE}; {', '.join(filled)} from the {CATALOG}"
    return list(models.values())


def _local_hit(model: ModelMetadata, device) -> Hit:
    from archsmith.baselines import reported_scores

    return Hit(id=model.id, task=model.task, library=model.library, languages=model.languages, license=model.license,
               commercial=commercial_use(model.license), gated=model.gated, downloads=None, likes=None, last_modified=None,
               params=model.params, params_source=model.params_source, source=model.source,
               memory=memory_table(model.params, device) if model.params else None, problems=list(model.problems),
               reported=reported_scores(card_sections(model.readme)[0])[0] if model.readme else [])


def _cached_models(repo_id: str | None = None) -> list[ModelMetadata]:
    """Model repos in the local HF cache, each from its newest cached revision's config.json, README.md,
    tokenizer_config.json and safetensors headers (when the weights are cached)."""
    from huggingface_hub import constants, scan_cache_dir

    try:
        cache = scan_cache_dir(constants.HF_HUB_CACHE)  # its default argument is bound when first imported
    except Exception:  # no cache directory yet
        return []
    models = []
    for repo in cache.repos:
        if repo.repo_type != "model" or repo_id is not None and repo.repo_id != repo_id or not repo.revisions:
            continue
        revision = max(repo.revisions, key=lambda r: r.last_modified)
        model = ModelMetadata(id=repo.repo_id, source=CACHE, sha=revision.commit_hash)
        _read_files(model, {f.file_name: f.file_path for f in revision.files}, CACHE, lambda path: open(path, "rb"))
        models.append(model)
    return models


def local_directory(path: str | Path) -> ModelMetadata:
    """A model directory on this machine (no Hub): its config.json, tokenizer_config.json, preprocessor_config.json,
    README.md and safetensors headers, read through the workspace boundary (never the weights)."""
    from archsmith.files import kind, open_file

    folder = Path(path)
    if kind(folder, "model_id") != "dir" or kind(folder / "config.json", "model_id") != "file":
        raise ArchsmithError("model_id", f"{str(path)[:200]} is not a model directory (no config.json in it)")
    if kind(folder / pipelines.INDEX, "model_id") == "file":
        raise ArchsmithError("model_id", f"{str(path)[:200]} is a diffusers pipeline directory; configure a pipeline from "
                                         "its Hub id")
    names = ["config.json", "tokenizer_config.json", PREPROCESSOR, "README.md", "model.safetensors",
             "model.safetensors.index.json"]
    model = ModelMetadata(id=str(folder), source=f"the local directory {folder}", library="transformers")
    found = {n: folder / n for n in names if kind(folder / n, "model_id") == "file"}
    opener = functools.partial(open_file, field="model_id")
    index = _read_json(found.get("model.safetensors.index.json"), [], "local directory", opener)
    if index and isinstance(index.get("weight_map"), dict):  # shards listed by the index; only plain names in the folder
        shards = {str(v) for v in index["weight_map"].values() if isinstance(v, str) and Path(str(v)).name == v}
        found.update({n: folder / n for n in shards if kind(folder / n, "model_id") == "file"})
    _read_files(model, found, "local directory", opener)
    return model


def _read_files(model: ModelMetadata, files: dict[str, Path], where: str, opener: Callable[[Path], Any]) -> None:
    """Fill `model` from its files (name -> path, each opened for binary reading with `opener`): config.json,
    tokenizer_config.json, preprocessor_config.json, README.md and the safetensors headers; `where` names the place."""
    model.config = _read_json(files.get("config.json"), model.problems, where, opener)
    model.tokenizer = _read_json(files.get("tokenizer_config.json"), model.problems, where, opener) or {}
    model.preprocessor = _read_json(files.get(PREPROCESSOR), model.problems, where, opener)
    if "README.md" in files:
        with opener(files["README.md"]) as fh:
            model.readme = fh.read(CARD_CHARS).decode("utf-8", errors="replace")
        card, _ = card_sections(model.readme)
        model.task, model.library = card.get("pipeline_tag"), card.get("library_name") or model.library
        model.languages, model.license = _languages(card) or [], _license(card)
    model.task = model.task or _task_from_architectures(model.config)
    if model.library is None and model.config is not None and "architectures" in model.config:
        model.library = "transformers"  # what the Hub infers for a config.json with `architectures`
    _local_params(model, files, where, opener)


def _read_json(path, problems: list[str], where: str, opener: Callable[[Path], Any]) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        raw = capped_bytes(path, JSON_BYTES, opener)
        if raw is None:
            problems.append(f"{path.name} in the {where} is over the {JSON_BYTES:,}-byte cap; not read")
            return None
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, OSError) as exc:
        problems.append(f"{path.name} in the {where} is not valid JSON: {exc}")
        return None
    return data if isinstance(data, dict) else None


def _task_from_architectures(config: dict[str, Any] | None) -> str | None:
    """text-generation for a *ForCausalLM, text-classification for *ForSequenceClassification, ... (AUTO_CLASSES)."""
    names = (config or {}).get("architectures") or []
    for task, auto in AUTO_CLASSES.items():
        if auto.startswith("AutoModelFor") and any(str(n).endswith(auto[len("AutoModel"):]) for n in names):
            return task
    return None


def _local_params(model: ModelMetadata, files: dict[str, Any], where: str, opener: Callable[[Path], Any]) -> None:
    """Exact count and tensor names from the safetensors headers in `files`, else config.json through our estimator."""
    from safetensors import safe_open

    from archsmith.files import fd_path

    shards = [n for n in files if n.endswith(".safetensors")]
    index = _read_json(files.get("model.safetensors.index.json"), model.problems, where, opener)
    wanted = sorted(set(index["weight_map"].values())) if index and isinstance(index.get("weight_map"), dict) else shards
    if wanted and all(n in files for n in wanted):
        shapes = {}
        for name in wanted:
            try:
                with opener(files[name]) as fh, safe_open(fd_path(fh.fileno()), framework="numpy") as weights:
                    shapes.update({k: weights.get_slice(k).get_shape() for k in weights.keys()})
            except Exception as exc:  # safetensors raises its own error types for a truncated or foreign file
                model.problems.append(f"{name} in the {where} cannot be read: {exc}")
                break
        else:
            model.params, model.params_source = sum(math.prod(s) for s in shapes.values()), f"safetensors header ({where})"
            model.tensor_names = sorted(shapes)
            return
    from archsmith.hfconfig import SUPPORTED

    if model.config is not None and model.config.get("model_type") in SUPPORTED:  # others: evaluate says so
        from archsmith.estimate import count_params
        from archsmith.hfconfig import spec_from_hf

        try:
            model.params = count_params(spec_from_hf(model.config))["total"]
            model.params_source = f"config.json in the {where} (archsmith estimate)"
        except ArchsmithError as exc:
            model.problems.append(str(exc))


# ---- evaluate one model -------------------------------------------------------------------------

def download(client, repo_id: str, filename: str, cap: int) -> str:
    """hf_hub_download of one small file, refused (HubError naming the file and the cap) when the Hub says it is
    larger than `cap` bytes; the caller reads at most `cap` bytes of what lands (a server may lie about the size)."""
    from huggingface_hub import hf_hub_url

    if not offline():
        meta = call(client.get_hf_file_metadata, url=hf_hub_url(repo_id, filename, endpoint=client.endpoint),
                    timeout=TIMEOUT_S, what=repo_id)
        if meta.size is not None and meta.size > cap:
            raise HubError(filename, f"{repo_id}/{filename} is {meta.size:,} bytes, over the {cap:,}-byte cap archsmith "
                                     "reads from the Hub; not downloaded")
    return call(client.hf_hub_download, repo_id, filename, what=repo_id)


def capped_bytes(path, cap: int, opener: Callable[[Path], Any] = functools.partial(open, mode="rb")) -> bytes | None:
    """The bytes of `path` (opened for binary reading with `opener`), None when it holds more than `cap` (never read past
    cap + 1)."""
    with opener(path) as fh:
        raw = fh.read(cap + 1)
    return raw if len(raw) <= cap else None


def fetch_json(client, repo_id: str, filename: str) -> dict[str, Any]:
    """Download one small JSON file (cached by huggingface_hub; at most JSON_BYTES) and parse it."""
    from archsmith.errors import ConfigError

    raw = capped_bytes(download(client, repo_id, filename, JSON_BYTES), JSON_BYTES)
    if raw is None:
        raise ConfigError(filename, f"{repo_id}/{filename} is over the {JSON_BYTES:,}-byte cap on JSON read from the Hub")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(filename, f"{repo_id}/{filename} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(filename, f"{repo_id}/{filename} must hold a JSON object")
    return data


def card_sections(text: str, problems: list[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(YAML card data, {heading: body}) of a README, both bounded; why metadata was not read goes to `problems`.

    Sections on limitations, bias and risks are the ones we report.
    """
    text = text[:CARD_CHARS]
    data: dict[str, Any] = {}
    match = re.match(r"---\n(.*?)\n---\n?(.*)", text, re.S)
    if match:
        data = card_metadata(match.group(1), problems)
        text = match.group(2)
    sections: dict[str, str] = {}
    for part in re.split(r"(?m)^#{1,4}\s+", text)[1:CARD_SECTIONS + 1]:
        heading, _, body = part.partition("\n")
        sections[heading.strip()[:CARD_VALUE_CHARS]] = body.strip()[:SECTION_CHARS]
    return data, sections


def card_metadata(text: str, problems: list[str] | None = None) -> dict[str, Any]:
    """A card's YAML front matter as data: no aliases (500 bytes of them expand to gigabytes), no tags, at most 64 KiB."""
    import yaml

    why = None
    if len(text) > CARD_YAML_CHARS:
        why = f"longer than {CARD_YAML_CHARS:,} characters"
    else:
        try:
            data = yaml.load(text, Loader=_card_loader())  # noqa: S506 - a SafeLoader that also refuses aliases
        except yaml.YAMLError as exc:
            why = (getattr(exc, "problem", None) or str(exc)).splitlines()[0]
        except RecursionError:
            why = "nested too deeply"
    if why is not None:
        if problems is not None:
            problems.append(f"README.md: card metadata not read: {why}")
        return {}
    return data if isinstance(data, dict) else {}


@functools.cache
def _card_loader():
    import yaml

    class CardLoader(yaml.SafeLoader):
        """PyYAML's SafeLoader, refusing aliases (`*name`) instead of sharing the node they name."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, f"YAML aliases are not accepted (found *{event.anchor})", event.start_mark)
            return super().compose_node(parent, index)

    return CardLoader


def card_text(value: Any) -> str | list[str] | None:
    """A card value shown to the user: a string or a list of strings, cut to size; anything else is dropped."""
    if isinstance(value, str):
        return value[:CARD_VALUE_CHARS]
    if isinstance(value, list):
        return [v[:CARD_VALUE_CHARS] for v in value[:CARD_LIST_ITEMS] if isinstance(v, str)]
    return None


def commit_id(sha: Any, problems: list[str] | None = None) -> str | None:
    """`sha` if it is a commit id (40 hex digits), else None (and why, in `problems`)."""
    if isinstance(sha, str) and COMMIT_ID.fullmatch(sha):
        return sha
    if sha is not None and problems is not None:
        problems.append(f"sha: the Hub gave a commit id that is not 40 hex digits ({sha!r:.60}); it is not used")
    return None


def evaluate(model_id: str, gpu: str | None = None, batch: int = 1, seq: int | None = None,
             endpoint: str | None = None, token: str | bool | None = None) -> dict[str, Any]:
    """config.json, tokenizer_config.json, the card and the safetensors header of one repo (never the weights).

    Offline (HF_HUB_OFFLINE=1) the same report comes from the local HF cache or the shipped reference architecture;
    `source` says which."""
    from archsmith.gpus import get_gpu

    _check_id(model_id)
    device = get_gpu(gpu) if gpu else None
    return _report(_metadata(model_id, endpoint, token), device, batch, seq)


def _metadata(model_id: str, endpoint: str | None, token: str | bool | None) -> ModelMetadata:
    """One Hub model's metadata: from the Hub, or offline (HF_HUB_OFFLINE=1) from the local HF cache or the catalog."""
    return local_model(model_id) if offline() else _hub_model(model_id, endpoint, token)


def local_model(model_id: str) -> ModelMetadata:
    """One model from the local HF cache or the shipped catalog; a one-line HubError when neither has it."""
    found = local_models(model_id)
    if not found:
        raise HubError(model_id, "HF_HUB_OFFLINE is set and it is neither in the local HF cache nor one of archsmith's "
                                 "reference architectures (search with HF_HUB_OFFLINE=1 lists what is here)")
    return found[0]


def _hub_model(model_id: str, endpoint: str | None, token: str | bool | None) -> ModelMetadata:
    client = api(endpoint, token)
    info = call(client.model_info, model_id, timeout=TIMEOUT_S, files_metadata=True, what=model_id)
    model = ModelMetadata(id=model_id, source=f"the Hub ({client.endpoint})", sha=info.sha, task=info.pipeline_tag,
                          library=info.library_name, gated=bool(info.gated), downloads=info.downloads, likes=info.likes)
    files = [s.rfilename for s in info.siblings or []]
    wanted = [("config.json", "config"), ("tokenizer_config.json", "tokenizer")]
    if PREPROCESSOR in files:  # images, audio, multimodal: how inputs are prepared
        wanted.append((PREPROCESSOR, "preprocessor"))
    for filename, attr in wanted:
        try:
            setattr(model, attr, fetch_json(client, model_id, filename))
        except ArchsmithError as exc:
            model.problems.append(str(exc))
    try:
        with open(download(client, model_id, "README.md", CARD_BYTES), encoding="utf-8", errors="replace") as fh:
            model.readme = fh.read(CARD_CHARS)
    except ArchsmithError as exc:
        model.problems.append(str(exc))
    card, _ = card_sections(model.readme)  # its problems are reported once, by _report
    model.license = _license(card) or (_license(info.card_data.to_dict()) if info.card_data else None)
    model.checkpoints = checkpoints.describe([(s.rfilename, s.size) for s in info.siblings or []])
    model.problems += model.checkpoints["notes"]
    if pipelines.INDEX in files:  # a diffusers pipeline: one folder of weights per component
        try:
            model.pipeline = pipelines.read_pipeline(fetch_json(client, model_id, pipelines.INDEX), files, lambda f: call(
                client.parse_safetensors_file_metadata, model_id, f, timeout=TIMEOUT_S, what=f"{model_id}/{f}"))
            model.problems += model.pipeline.pop("problems")
            model.params, model.params_source = model.pipeline["params"], "safetensors headers of the pipeline's components"
        except ArchsmithError as exc:
            model.problems.append(str(exc))
        return model
    try:
        meta = call(client.get_safetensors_metadata, model_id, what=model_id)
        model.params, model.params_source = int(sum(meta.parameter_count.values())), "safetensors header"
        model.tensor_names = sorted(name for file in meta.files_metadata.values() for name in file.tensors)
    except ArchsmithError as exc:
        model.problems.append(str(exc))
    return model


def _report(model: ModelMetadata, device: dict[str, Any] | None, batch: int, seq: int | None) -> dict[str, Any]:
    """The evaluation of one model from its metadata: architecture, parameters, license, card, memory."""
    from archsmith import estimate as est
    from archsmith.hfconfig import SUPPORTED, spec_from_hf

    from archsmith.baselines import reported_scores

    config, problems = model.config, list(model.problems)
    card, sections = card_sections(model.readme, problems)
    scores, unread = reported_scores(card)
    problems += unread
    params, params_source = model.params, model.params_source
    spec = None
    if config is not None and config.get("model_type") in SUPPORTED:
        try:
            spec = spec_from_hf(config)
        except ArchsmithError as exc:
            problems.append(str(exc))
    elif config is not None:
        problems.append(f"model_type {config.get('model_type')!r} is not one archsmith reads ({', '.join(SUPPORTED)}); "
                        "parameters come from the safetensors header")
    if spec is not None and params is None:
        params, params_source = est.count_params(spec)["total"], "config.json (archsmith estimate)"
    report: dict[str, Any] = {
        "id": model.id, "source": model.source, "sha": commit_id(model.sha, problems), "task": model.task,
        "library": model.library, "license": model.license, "commercial": commercial_use(model.license),
        "license_class": license_class(model.license), "license_terms": license_terms(model.license),
        "gated": model.gated, "downloads": model.downloads, "likes": model.likes,
        "params": params, "params_source": params_source,
        "architecture": {"model_type": (config or {}).get("model_type"), "architectures": (config or {}).get("architectures"),
                         "spec": spec.to_dict() if spec else None},
        "context_length": spec.context_length if spec else (config or {}).get("max_position_embeddings"),
        "vocab_size": spec.vocab_size if spec else (config or {}).get("vocab_size"),
        "tokenizer": {k: model.tokenizer.get(k) for k in ("tokenizer_class", "model_max_length", "bos_token", "eos_token", "pad_token")
                      if k in model.tokenizer},
        "provenance": {"base_model": card_text(card.get("base_model")), "datasets": card_text(card.get("datasets")),
                       "language": card_text(card.get("language", model.languages))},
        "card_sections": {h: b for h, b in sections.items()
                          if re.search(r"limitation|bias|risk|out-of-scope|intended use", h, re.I)},
        "tensor_names": model.tensor_names,
        "reported_scores": scores,  # the card's model-index: what its authors report, with the source they name
        "pipeline": model.pipeline,
        "modality": modalities.modality_of(model.task, config),
        "processor": modalities.processor_settings(model.preprocessor),
        "checkpoints": model.checkpoints["formats"] if model.checkpoints else None,
        "memory": memory_table(params, device) if params else None,
        "problems": problems,
    }
    if spec is not None:
        seq = seq or min(spec.context_length, 2048)
        report["estimate"] = {d: est.estimate(spec, batch=batch, seq=seq, dtype=d)["memory"] for d in ("bf16", "fp32")}
        report["estimate_settings"] = {"batch": batch, "seq": seq}
    return report


def _check_id(model_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    message = f"must look like 'org/name' (letters, digits, '-', '_', '.'; at most 96 characters), got {model_id!r:.80}"
    if not isinstance(model_id, str) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model_id) or ".." in model_id:
        raise ArchsmithError("model_id", message)
    try:
        validate_repo_id(model_id)
    except HFValidationError:
        raise ArchsmithError("model_id", message) from None


# ---- plan a fine-tune -----------------------------------------------------------------------------

# what `finetune.py.j2` writes in full (data, loop, evaluation, saving), by the task row's PEFT task type; text only
SCRIPT_KINDS = {"CAUSAL_LM": "causal", "SEQ_CLS": "classify"}
MAX_LENGTH = {"causal": 1024, "classify": 512}  # tokens per example by default (at most the model's context)
ROUTERS = re.compile(r"^(gate|router)$")  # MoE router projections: never LoRA targets


def lora_targets(evaluation: dict[str, Any], config: dict[str, Any] | None = None,
                 auto_class: str = "AutoModel") -> tuple[list[str], str]:
    """(leaf names of the layers LoRA adapts, where they come from).

    The families registry's names for a family it has (kept to those the checkpoint holds when its tensor names are
    known); else the linear layers inside the blocks of the model transformers builds from config.json on the meta
    device (the names peft sees at run time; no weights, never remote code); else those of the checkpoint's tensor
    names."""
    from archsmith.families import lora_modules

    arch = evaluation["architecture"]
    model_type = (arch["spec"] or {}).get("model_type") or arch["model_type"]
    leaves = set()
    for name in evaluation["tensor_names"]:
        match = re.search(r"\.\d+\.(?:[\w]+\.)*?([A-Za-z_][\w]*)\.weight$", name)
        if match and not re.search(r"norm|ln_|embed|wte|wpe|layernorm", match.group(1), re.I) and not ROUTERS.match(match.group(1)):
            leaves.add(match.group(1))
    registry = lora_modules(model_type)
    if registry is not None:
        kept = [n for n in registry if n in leaves] if leaves else list(registry)
        return sorted(kept or registry), f"the families registry's module names for model_type {model_type}"
    found = _meta_linear_names(config, auto_class) if config is not None else []
    if found:
        return found, "the model transformers builds from config.json on the meta device"
    if leaves:
        return sorted(leaves), "the checkpoint's tensor names (linear layers inside the blocks)"
    raise ArchsmithError("target_modules", f"no LoRA target found for {evaluation['id']}: no registry family, no "
                                           "safetensors header and no config.json transformers builds; use --method full")


def _meta_linear_names(config: dict[str, Any], auto_class: str) -> list[str]:
    """Leaf names of the nn.Linear / Conv1D modules inside the numbered blocks of the model transformers builds from
    `config` on the meta device (no memory for weights); [] when transformers does not know its model_type.
    Remote code is never run: the class comes from transformers' own mapping of the model_type."""
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.pytorch_utils import Conv1D

    try:
        cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "auto_map"})
        with torch.device("meta"):
            model = getattr(transformers, auto_class, transformers.AutoModel).from_config(cfg)
    except Exception:  # an unknown model_type, a config its class refuses: no names from here
        return []
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, (torch.nn.Linear, Conv1D)) and re.search(r"\.\d+\.", name)}
    return sorted(n for n in names if not ROUTERS.match(n))


def plan_finetune(model_id: str, task: str = "text-generation", method: str = "auto", gpu: str = "t4",
                  endpoint: str | None = None, token: str | bool | None = None) -> dict[str, Any]:
    """Loading + fine-tuning configuration for `model_id` (a Hub id, or a model directory on this machine: no Hub
    needed) on `gpu`, with the memory numbers behind the choice and the script that runs it."""
    modalities.task_row(task)  # a task we know, before any request
    methods = ("auto", "full", "lora", "qlora")
    if method not in methods:
        raise ArchsmithError("method", f"must be one of {', '.join(methods)}; got {method!r}")
    from archsmith.gpus import get_gpu

    local = is_local_model(model_id)
    if not local:
        _check_id(model_id)
    model = local_directory(model_id) if local else _metadata(model_id, endpoint, token)
    device = get_gpu(gpu)
    evaluation = _report(model, device, 1, None)
    if evaluation["sha"] is None and evaluation["source"] == CATALOG:  # offline, from the catalog only: no commit to pin
        raise HubError(model_id, f"offline, it is only an {CATALOG}, not in the local HF cache: the script cannot pin a "
                                 "revision; download it once online (or give a local model directory); `evaluate` gives "
                                 "the memory of each fine-tuning method offline")
    if (evaluation["pipeline"] is None) != (modalities.TASKS[task].modality != "diffusion"):
        raise ArchsmithError("task", f"{model_id} is {'a diffusers pipeline' if evaluation['pipeline'] else 'not a diffusers pipeline'}; "
                                     f"{task} is {'not ' if evaluation['pipeline'] else ''}a pipeline task")
    if evaluation["pipeline"] is not None:
        return _plan_pipeline(model_id, task, method, gpu, evaluation)
    memory = evaluation["memory"]
    if memory is None:
        gated = [p for p in evaluation["problems"] if "is gated" in p]
        raise HubError(model_id, gated[0].split(": ", 1)[1] if gated else
                       "parameter count unknown (no safetensors header, no supported config.json)")
    fits = memory["fits"]
    if method == "auto":
        method = next((m for m in ("full", "lora", "qlora") if fits[f"finetune_{m}"]), "qlora")
    if not local:
        _check_pinned(model_id, evaluation)
    bf16 = device.get("bf16_tflops") is not None  # Turing (T4) and older have no bf16: autocast to fp16
    row = modalities.task_row(task, evaluation["architecture"]["architectures"])
    kind = SCRIPT_KINDS.get(row.peft_task_type) if row.modality == "text" else None
    targets, source = lora_targets(evaluation, model.config, row.auto_class) if method != "full" else ([], None)
    context = evaluation["context_length"] or MAX_LENGTH.get(kind, 1024)
    settings = {
        "model_id": str(Path(model_id).resolve()) if local else model_id, "revision": evaluation["sha"], "task": task,
        "auto_class": row.auto_class, "method": method, "kind": kind,
        "processor_class": row.processor, "modality": row.modality, "processor": evaluation["processor"], "head": row.head,
        "num_labels": row.num_labels,
        # full: fp32 master weights (the 16 bytes per parameter of the plan); LoRA / QLoRA: the frozen base in 16 bits
        "dtype": "float32" if method == "full" else "bfloat16" if bf16 else "float16",
        "amp_dtype": "bfloat16" if bf16 else "float16", "attn_implementation": "sdpa",
        "peft_task_type": row.peft_task_type,
        "quantization": "4bit-nf4" if method == "qlora" else None, "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": targets, "target_source": source,
        "gradient_checkpointing": True, "learning_rate": 2e-5 if method == "full" else 2e-4,
        "max_length": min(int(context), MAX_LENGTH.get(kind, 1024)),
        # QLoRA is what fits when memory is tight: one sequence per micro-batch, the same 16 per optimizer step
        "batch_size": 1 if method == "qlora" else 4, "grad_accum": 16 if method == "qlora" else 4,
        "epochs": 1, "warmup_fraction": 0.03, "eval_fraction": 0.1,
    }
    from archsmith.report import render_template

    notes = [] if kind else [f"the script loads the model and its adapters; data loading, the training loop and evaluation "
                             f"are written for text-generation and text-classification only, not {task}"]
    return {
        "model_id": model_id, "gpu": gpu, "method": method, "fits": fits[f"finetune_{method}"],
        "needs_bytes": memory["needs_bytes"][f"finetune_{method}"], "usable_bytes": memory["usable_bytes"],
        "memory": memory, "settings": settings, "license": evaluation["license"],
        "license_class": evaluation["license_class"], "gated": evaluation["gated"], "source": evaluation["source"],
        "script": render_template("finetune.py.j2", settings), "script_complete": kind is not None,
        "usage": f"python finetune.py --data {'train.csv' if kind == 'classify' else 'train.jsonl'} --out finetuned" if kind else None,
        "notes": notes,
        "why": [f"{m}: needs {memory['needs_bytes'][f'finetune_{m}'] / 2**30:.1f} GiB of {memory['usable_bytes'] / 2**30:.1f} GiB usable "
                f"on {gpu} -> {'fits' if fits[f'finetune_{m}'] else 'does not fit'}" for m in ("full", "lora", "qlora")]
               + ([f"LoRA targets from {source}"] if source else []),
    }


def is_local_model(model_id: str) -> bool:
    """A directory on this machine (with its config.json), rather than a Hub id."""
    from archsmith.files import kind

    return isinstance(model_id, str) and kind(model_id, "model_id") == "dir"


def _check_pinned(model_id: str, evaluation: dict[str, Any]) -> None:
    """A script is only written pinned to a commit: refuse a Hub (or cache) answer whose commit id is not 40 hex digits."""
    if evaluation["sha"] is None:
        raise HubError("revision", f"the Hub gave no valid commit id for {model_id} (40 hex digits); the script is only written "
                                   "pinned to one")


def _plan_pipeline(model_id: str, task: str, method: str, gpu: str, evaluation: dict[str, Any]) -> dict[str, Any]:
    """plan_finetune for a diffusers pipeline: its UNet learns (full or LoRA), the rest stays frozen."""
    from archsmith.gpus import get_gpu, memory_bytes
    from archsmith.report import render_template

    _check_pinned(model_id, evaluation)
    device = get_gpu(gpu)
    plan = pipelines.finetune_plan(evaluation["pipeline"], method, int(memory_bytes(device) * USABLE),
                                   device.get("bf16_tflops") is not None)
    m = plan["method"]
    settings = {"model_id": model_id, "revision": evaluation["sha"], "task": task, "method": m, "modality": "diffusion",
                **plan["settings"]}
    return {"model_id": model_id, "gpu": gpu, "method": m, "fits": plan["fits"][f"finetune_{m}"],
            "needs_bytes": plan["needs_bytes"][f"finetune_{m}"], "usable_bytes": plan["usable_bytes"],
            "memory": {"needs_bytes": plan["needs_bytes"], "fits": plan["fits"], "usable_bytes": plan["usable_bytes"],
                       "components": {r["component"]: r["memory_bytes"] for r in evaluation["pipeline"]["components"]}},
            "settings": settings, "license": evaluation["license"], "gated": evaluation["gated"],
            "script": render_template("finetune_diffusers.py.j2", settings),
            "why": [f"{k[9:]}: needs {v / 2**30:.1f} GiB of {plan['usable_bytes'] / 2**30:.1f} GiB usable on {gpu} -> "
                    f"{'fits' if plan['fits'][k] else 'does not fit'} (the UNet learns; activations on top)"
                    for k, v in plan["needs_bytes"].items()]}


def spec_for(source: str, endpoint: str | None = None, token: str | bool | None = None):
    """ArchitectureSpec from a config.json path, a model directory, or (when no such path exists) a Hub id."""
    return spec_and_source(source, endpoint, token)[0]


def spec_and_source(source: str, endpoint: str | None = None, token: str | bool | None = None):
    """(ArchitectureSpec, where its config.json came from): a path, the Hub, or offline the local HF cache or catalog."""
    from archsmith.files import kind
    from archsmith.hfconfig import read_config

    looks_local = source.endswith(".json") or kind(source.split("/", 1)[0], "config") == "dir"  # runs/nope: a typo
    if looks_local or kind(source, "config") is not None or not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        return _noted(read_config(source), str(source))
    _check_id(source)
    if not offline():
        client = api(endpoint, token)
        try:
            return _noted(fetch_json(client, source, "config.json"), f"config.json from the Hub ({client.endpoint})")
        except HubError as exc:  # say that it was taken for a Hub id because no such local path exists
            raise HubError(exc.field, f"{str(exc).split(': ', 1)[-1]} (no local path {source} either)") from None
    model = local_model(source)
    if model.config is None:
        raise HubError(source, f"offline, and config.json is not in the {CACHE}")
    return _noted(model.config, f"config.json from the {model.source}")


def _noted(config: Any, source: str):
    """(spec, source) of a config read, the source followed by how it was read when that is not by its model_type."""
    from archsmith.hfconfig import read_note, spec_from_hf

    spec = spec_from_hf(config)
    note = read_note(config)
    return spec, f"{source} ({note})" if note else source
