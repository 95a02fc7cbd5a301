"""Hugging Face Hub discovery: search, evaluate and plan fine-tuning from metadata only.

Everything goes through `huggingface_hub.HfApi` (never hand-written HTTP). Weights are never
downloaded: parameter counts come from the Hub's safetensors metadata (header reads), else from
`config.json` through our estimator. Tokens come from the usual HF places (HF_TOKEN, the cached
login) and are never printed. With HF_HUB_OFFLINE=1 or no network, search falls back to the local
HF cache and the shipped reference architectures, and says so.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from archsmith.errors import ArchsmithError

# license id (as in model cards) -> may it be used commercially?  yes | restricted (terms apply) | no
LICENSES: dict[str, str] = {
    "apache-2.0": "yes", "mit": "yes", "bsd-2-clause": "yes", "bsd-3-clause": "yes", "bsd": "yes", "cc-by-4.0": "yes",
    "cc-by-sa-4.0": "yes", "cc0-1.0": "yes", "unlicense": "yes", "openrail": "restricted", "openrail++": "restricted",
    "bigscience-openrail-m": "restricted", "creativeml-openrail-m": "restricted", "llama2": "restricted",
    "llama3": "restricted", "llama3.1": "restricted", "llama3.2": "restricted", "llama3.3": "restricted", "gemma": "restricted",
    "cc-by-nc-4.0": "no", "cc-by-nc-sa-4.0": "no", "cc-by-nc-nd-4.0": "no", "cc-by-nc-2.0": "no", "cc-by-nc-3.0": "no",
    "gpl-3.0": "yes", "lgpl-3.0": "yes", "agpl-3.0": "yes", "other": "unknown",
}
COMMERCIAL = tuple(k for k, v in LICENSES.items() if v == "yes")  # the "commercial" preset: permissive licenses only
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
AUTO_CLASSES = {
    "text-generation": "AutoModelForCausalLM", "text-classification": "AutoModelForSequenceClassification",
    "sentiment-analysis": "AutoModelForSequenceClassification", "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering", "fill-mask": "AutoModelForMaskedLM",
    "summarization": "AutoModelForSeq2SeqLM", "translation": "AutoModelForSeq2SeqLM", "text2text-generation": "AutoModelForSeq2SeqLM",
    "feature-extraction": "AutoModel", "sentence-similarity": "AutoModel",
}


CARD_CHARS = 1 << 20  # a model card is read up to 1 MiB: its metadata and the sections we report sit near the top
CARD_YAML_CHARS = 64 << 10  # card metadata (YAML front matter) beyond 64 KiB is not read; real ones are a few KiB
CARD_SECTIONS = 64  # headings kept from one card
SECTION_CHARS = 2000  # characters kept from one card section
CARD_VALUE_CHARS = 200  # a metadata string (license id, dataset name) is cut to this
CARD_LIST_ITEMS = 32  # items kept from a metadata list (datasets, languages, base models)
COMMIT_ID = re.compile(r"[0-9a-f]{40}")  # a git commit id: the only revision a fine-tuning script is pinned to

PEFT_TASK_TYPES = {"AutoModelForCausalLM": "CAUSAL_LM", "AutoModelForSequenceClassification": "SEQ_CLS",
                   "AutoModelForTokenClassification": "TOKEN_CLS", "AutoModelForQuestionAnswering": "QUESTION_ANS",
                   "AutoModelForSeq2SeqLM": "SEQ_2_SEQ_LM"}


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
    """Run one Hub call; retry HTTP 429 with backoff; turn client errors into one-line HubErrors naming `what`."""
    from huggingface_hub import errors

    for attempt in range(RETRIES):
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
            raise HubError(what, "HF_HUB_OFFLINE is set: the Hub is not asked (search works offline on the local cache)") from None
        except errors.HfHubHTTPError as exc:
            http = exc
        except Exception as exc:  # httpx timeouts and connection errors come through under several names
            name = type(exc).__name__
            if "Timeout" in name or "Connect" in name or isinstance(exc, OSError):
                raise HubError(what, _unreachable(exc)) from None
            if isinstance(exc, (ValueError, TypeError, KeyError)):  # an answer that is not the JSON it should be
                raise HubError(what, f"the Hub's answer is malformed ({name}: {str(exc)[:100]})") from None
            raise
        status = http.response.status_code if http.response is not None else None
        if status == 429 and attempt + 1 < RETRIES:
            time.sleep(_retry_after(http, attempt))
            continue
        if status == 429:
            raise HubError(what, f"rate limited by the Hub (HTTP 429) after {RETRIES} tries; wait and retry") from None
        raise HubError(what, f"the Hub answered HTTP {status}") from None
    raise AssertionError("unreachable")


def _unreachable(cause: BaseException | None) -> str:
    """Why no answer came: offline without a cached copy, a timeout, or no connection."""
    if offline():
        return "HF_HUB_OFFLINE is set and the file is not in the local HF cache"
    if cause is not None and "Timeout" in type(cause).__name__:
        return "the Hub did not answer in time"
    return "cannot reach the Hub (no network?); set HF_HUB_OFFLINE=1 to search the local cache"


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

@dataclass
class Hit:
    id: str
    task: str | None
    library: str | None
    license: str | None
    commercial: str
    gated: bool
    downloads: int
    likes: int
    last_modified: str | None
    params: int | None
    params_source: str
    memory: dict[str, Any] | None
    reasons: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def commercial_use(license: str | None) -> str:
    """yes | restricted | no | unknown, from the LICENSES table."""
    return LICENSES.get(str(license).lower(), "unknown") if license else "unknown"


def license_allowed(license: str | None, allowed: tuple[str, ...] | None) -> bool:
    return allowed is None or (license or "").lower() in allowed


def resolve_licenses(license: str | list[str] | None) -> tuple[str, ...] | None:
    """'commercial' -> the permissive preset; a comma list or list -> that allow-list; None -> no filter."""
    if license is None or license == []:
        return None
    names = [x.strip().lower() for x in (license.split(",") if isinstance(license, str) else license) if x.strip()]
    if names == ["commercial"]:
        return COMMERCIAL
    return tuple(names)


def search(query: str | None = None, task: str | None = None, library: str | None = None, author: str | None = None,
           language: str | None = None, license: str | list[str] | None = None, sort: str = "downloads", limit: int = 20,
           gpu: str | None = None, use: str = "run_fp16", max_params: int | None = None,
           endpoint: str | None = None, token: str | bool | None = None) -> dict[str, Any]:
    """Ranked models: constraints first (license, fits `use` on `gpu`, max_params), then popularity."""
    from archsmith.gpus import get_gpu

    if sort not in SORTS:
        raise ArchsmithError("sort", f"must be one of {', '.join(SORTS)}; got {sort!r}")
    if not isinstance(limit, int) or not 1 <= limit <= 200:
        raise ArchsmithError("limit", f"must be in [1, 200], got {limit!r}")
    uses = [f"run_{p}" for p in PRECISIONS] + ["finetune_full", "finetune_lora", "finetune_qlora"]
    if use not in uses:
        raise ArchsmithError("use", f"must be one of {', '.join(uses)}; got {use!r}")
    device = get_gpu(gpu) if gpu else None
    allowed = resolve_licenses(license)
    if offline():
        hits = _offline_hits(query, author, device)
        source = "offline: the local HF cache and archsmith's reference architectures (HF_HUB_OFFLINE is set)"
    else:
        client = api(endpoint, token)
        filters = [f for f in (library, language) if f]  # the Hub lists libraries and languages as plain tags
        listing = call(lambda: list(client.list_models(search=query or None, pipeline_tag=task, author=author,
                                                       filter=filters or None, sort=SORTS[sort], limit=limit, expand=EXPAND)),
                       what="search")
        with ThreadPoolExecutor(max_workers=ENRICH_WORKERS) as pool:
            hits = list(pool.map(lambda info: _hit(client, info, device), listing))
        source = f"the Hub ({client.endpoint})"
    return {"source": source, "offline": offline(), "query": {"query": query, "task": task, "library": library,
            "author": author, "language": language, "license": list(allowed) if allowed else None, "gpu": gpu, "use": use,
            "max_params": max_params, "sort": sort}, "results": [h.to_dict() for h in rank(hits, allowed, use, max_params)]}


def _hit(client, info, device) -> Hit:
    """One listing entry, enriched; an odd entry gets `problems`, never an exception."""
    lic = _license(info.card_data.to_dict() if getattr(info, "card_data", None) else {})
    hit = Hit(id=info.id, task=info.pipeline_tag, library=info.library_name, license=lic,
              commercial=commercial_use(lic), gated=bool(info.gated),
              downloads=info.downloads or 0, likes=info.likes or 0,
              last_modified=info.last_modified.isoformat() if info.last_modified else None,
              params=None, params_source="unknown", memory=None)
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


def rank(hits: list[Hit], allowed: tuple[str, ...] | None, use: str, max_params: int | None) -> list[Hit]:
    """Hits that meet every constraint first, then by downloads and likes; each gets its reasons."""
    def violations(h: Hit) -> list[str]:
        v = []
        if not license_allowed(h.license, allowed):
            v.append(f"license {h.license or 'unknown'} is not in the allowed list")
        if h.params is None:
            v.append("parameter count unknown")
        elif max_params is not None and h.params > max_params:
            v.append(f"{h.params:,} parameters > max {max_params:,}")
        if h.memory and "fits" in h.memory and not h.memory["fits"][use]:
            v.append(f"{use} needs {h.memory['needs_bytes'][use] / 2**30:.1f} GiB > {h.memory['usable_bytes'] / 2**30:.1f} GiB usable on {h.memory['gpu']}")
        return v

    scored = sorted(hits, key=lambda h: (len(violations(h)), -h.downloads, -h.likes, h.id))
    for i, h in enumerate(scored, 1):
        h.rank = i
        bad = violations(h)
        h.reasons = (["meets every constraint"] if not bad else bad) + [f"{h.downloads:,} downloads, {h.likes:,} likes"]
        if h.gated:
            h.reasons.append("gated: accept the terms on the Hub before downloading")
        if h.commercial == "restricted":
            h.reasons.append(f"license {h.license}: commercial use allowed under its own terms; read them")
    return scored


def _offline_hits(query: str | None, author: str | None, device) -> list[Hit]:
    """Models in the local HF cache (their config.json) and the shipped reference architectures."""
    from archsmith.catalog import reference_architectures

    hits: list[Hit] = []
    for repo_id, params, lic, source in _cached_models() + [(r["repo"], r["params"], r["license"], "archsmith reference architecture")
                                                            for r in reference_architectures()]:
        if query and query.lower() not in repo_id.lower() or author and not repo_id.lower().startswith(author.lower() + "/"):
            continue
        if any(h.id == repo_id for h in hits):
            continue
        hits.append(Hit(id=repo_id, task="text-generation" if source != "local HF cache" else None, library="transformers",
                        license=lic, commercial=commercial_use(lic), gated=False,
                        downloads=0, likes=0, last_modified=None, params=params, params_source=source,
                        memory=memory_table(params, device) if params else None))
    return hits


def _cached_models() -> list[tuple[str, int | None, str | None, str]]:
    from huggingface_hub import constants, scan_cache_dir

    from archsmith.estimate import count_params
    from archsmith.hfconfig import spec_from_hf

    try:
        cache = scan_cache_dir(constants.HF_HUB_CACHE)  # its default argument is bound when first imported
    except Exception:  # no cache directory yet
        return []
    rows = []
    for repo in cache.repos:
        if repo.repo_type != "model":
            continue
        params = None
        for revision in repo.revisions:
            config = next((f.file_path for f in revision.files if f.file_name == "config.json"), None)
            if config is not None:
                try:
                    params = count_params(spec_from_hf(json.loads(config.read_text())))["total"]
                except (ArchsmithError, ValueError, OSError):
                    pass
                break
        rows.append((repo.repo_id, params, None, "local HF cache"))
    return rows


# ---- evaluate one model -------------------------------------------------------------------------

def fetch_json(client, repo_id: str, filename: str) -> dict[str, Any]:
    """Download one small JSON file (cached by huggingface_hub) and parse it."""
    from archsmith.errors import ConfigError

    path = call(client.hf_hub_download, repo_id, filename, what=repo_id)
    try:
        data = json.loads(open(path, encoding="utf-8").read())
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
    """config.json, tokenizer_config.json, the card and the safetensors header of one repo (never the weights)."""
    from archsmith import estimate as est
    from archsmith.gpus import get_gpu
    from archsmith.hfconfig import SUPPORTED, spec_from_hf

    _check_id(model_id)
    client = api(endpoint, token)
    info = call(client.model_info, model_id, timeout=TIMEOUT_S, what=model_id)
    device = get_gpu(gpu) if gpu else None
    problems: list[str] = []
    config: dict[str, Any] | None = None
    try:
        config = fetch_json(client, model_id, "config.json")
    except ArchsmithError as exc:
        problems.append(str(exc))
    tokenizer: dict[str, Any] = {}
    try:
        tokenizer = fetch_json(client, model_id, "tokenizer_config.json")
    except ArchsmithError as exc:
        problems.append(str(exc))
    readme = ""
    try:
        with open(call(client.hf_hub_download, model_id, "README.md", what=model_id), encoding="utf-8", errors="replace") as fh:
            readme = fh.read(CARD_CHARS)
    except ArchsmithError as exc:
        problems.append(str(exc))
    card, sections = card_sections(readme, problems)
    params, params_source, tensor_names = None, "unknown", []
    try:
        meta = call(client.get_safetensors_metadata, model_id, what=model_id)
        params, params_source = int(sum(meta.parameter_count.values())), "safetensors header"
        tensor_names = sorted(name for file in meta.files_metadata.values() for name in file.tensors)
    except ArchsmithError as exc:
        problems.append(str(exc))
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
    lic = _license(card) or (_license(info.card_data.to_dict()) if info.card_data else None)
    report: dict[str, Any] = {
        "id": model_id, "sha": commit_id(info.sha, problems), "task": info.pipeline_tag, "library": info.library_name,
        "license": lic, "commercial": commercial_use(lic),
        "gated": bool(info.gated), "downloads": info.downloads, "likes": info.likes,
        "params": params, "params_source": params_source,
        "architecture": {"model_type": (config or {}).get("model_type"), "architectures": (config or {}).get("architectures"),
                         "spec": spec.to_dict() if spec else None},
        "context_length": spec.context_length if spec else (config or {}).get("max_position_embeddings"),
        "vocab_size": spec.vocab_size if spec else (config or {}).get("vocab_size"),
        "tokenizer": {k: tokenizer.get(k) for k in ("tokenizer_class", "model_max_length", "bos_token", "eos_token", "pad_token")
                      if k in tokenizer},
        "provenance": {key: card_text(card.get(key)) for key in ("base_model", "datasets", "language")},
        "card_sections": {h: b for h, b in sections.items()
                          if re.search(r"limitation|bias|risk|out-of-scope|intended use", h, re.I)},
        "tensor_names": tensor_names,
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

def lora_targets(evaluation: dict[str, Any]) -> list[str]:
    """Leaf names of the linear layers inside the blocks, read from the model's real tensor names."""
    leaves = set()
    for name in evaluation["tensor_names"]:
        match = re.search(r"\.\d+\.(?:[\w]+\.)*?([A-Za-z_][\w]*)\.weight$", name)
        if match and not re.search(r"norm|ln_|embed|wte|wpe|layernorm", match.group(1), re.I):
            leaves.add(match.group(1))
    if not leaves and evaluation["architecture"]["spec"]:  # no header: the spec's HF names
        from archsmith.estimate import layer_tensors
        from archsmith.spec import ArchitectureSpec

        spec = ArchitectureSpec.from_dict(evaluation["architecture"]["spec"])
        leaves = {t.name.split(".")[-2] for t in layer_tensors(spec) if len(t.shape) == 2 and "norm" not in t.name}
    return sorted(leaves)


def plan_finetune(model_id: str, task: str = "text-generation", method: str = "auto", gpu: str = "t4",
                  endpoint: str | None = None, token: str | bool | None = None) -> dict[str, Any]:
    """Loading + fine-tuning configuration for `model_id` on `gpu`, with the memory numbers behind the choice."""
    if task not in AUTO_CLASSES:
        raise ArchsmithError("task", f"must be one of {', '.join(AUTO_CLASSES)}; got {task!r}")
    methods = ("auto", "full", "lora", "qlora")
    if method not in methods:
        raise ArchsmithError("method", f"must be one of {', '.join(methods)}; got {method!r}")
    evaluation = evaluate(model_id, gpu=gpu, endpoint=endpoint, token=token)
    memory = evaluation["memory"]
    if memory is None:
        gated = [p for p in evaluation["problems"] if "is gated" in p]
        raise HubError(model_id, gated[0].split(": ", 1)[1] if gated else
                       "parameter count unknown (no safetensors header, no supported config.json)")
    fits = memory["fits"]
    if method == "auto":
        method = next((m for m in ("full", "lora", "qlora") if fits[f"finetune_{m}"]), "qlora")
    if evaluation["sha"] is None:
        raise HubError("revision", f"the Hub gave no valid commit id for {model_id} (40 hex digits); the script is only written "
                                   "pinned to one")
    from archsmith.gpus import get_gpu

    bf16 = get_gpu(gpu).get("bf16_tflops") is not None  # Turing (T4) and older have no bf16: train in fp16
    settings = {
        "model_id": model_id, "revision": evaluation["sha"], "task": task, "auto_class": AUTO_CLASSES[task], "method": method,
        # without bf16 (T4, V100) a full fine-tune keeps fp32 weights and trains with fp16 autocast
        "dtype": "bfloat16" if bf16 else "float32" if method == "full" else "float16", "attn_implementation": "sdpa", "device_map": "auto",
        "peft_task_type": PEFT_TASK_TYPES.get(AUTO_CLASSES[task], "FEATURE_EXTRACTION"),
        "quantization": "4bit-nf4" if method == "qlora" else None, "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": lora_targets(evaluation) if method != "full" else [],
        "gradient_checkpointing": True, "learning_rate": 2e-5 if method == "full" else 2e-4,
    }
    from archsmith.report import render_template

    return {
        "model_id": model_id, "gpu": gpu, "method": method, "fits": fits[f"finetune_{method}"],
        "needs_bytes": memory["needs_bytes"][f"finetune_{method}"], "usable_bytes": memory["usable_bytes"],
        "memory": memory, "settings": settings, "license": evaluation["license"], "gated": evaluation["gated"],
        "script": render_template("finetune.py.j2", settings),
        "why": [f"{m}: needs {memory['needs_bytes'][f'finetune_{m}'] / 2**30:.1f} GiB of {memory['usable_bytes'] / 2**30:.1f} GiB usable "
                f"on {gpu} -> {'fits' if fits[f'finetune_{m}'] else 'does not fit'}" for m in ("full", "lora", "qlora")],
    }


def spec_for(source: str, endpoint: str | None = None, token: str | bool | None = None):
    """ArchitectureSpec from a config.json path, a model directory, or (when no such path exists) a Hub id."""
    from archsmith.files import kind
    from archsmith.hfconfig import load_spec, spec_from_hf

    if kind(source, "config") is not None or not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        return load_spec(source)
    _check_id(source)
    return spec_from_hf(fetch_json(api(endpoint, token), source, "config.json"))
