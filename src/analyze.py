"""Layer-by-layer analysis of any `nn.Module`: shapes, parameters, FLOPs, saved activations, latency.

One instrumented forward pass records, per module (qualified name as in `named_modules()`):
input/output shapes, parameters, FLOPs (`torch.utils.flop_counter.FlopCounterMode`, plus a formula
for the CPU flash-attention kernel it does not know), bytes saved for backward
(`torch.autograd.graph.saved_tensors_hooks`) and the aten ops it ran. A second, profiled loop
(`torch.profiler` with one `record_function` per module) gives each module's share of the measured
latency. Models too large to hold analyse on the meta device: shapes, parameters, FLOPs and saved
bytes, no latency.

MODEL is an HF model directory or Hub id (config.json only for an id), an archsmith spec JSON
(`ArchitectureSpec` fields, built with `archsmith.network`), or `file.py:factory` - a Python
file whose `factory()` returns `(module, example_inputs)`. The last runs the user's code, so only
callers that may run code get it (the CLI; the MCP server refuses it unless started with
ARCHSMITH_ALLOW_CODE=1).
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from archsmith.errors import ArchsmithError

FACTORY = re.compile(r"^(?P<file>.+\.py):(?P<name>[A-Za-z_]\w*)$")
META_ABOVE_BYTES = 2 * 2**30  # fp32 weights above 2 GiB analyse on the meta device: shapes, params, FLOPs; no latency
DEFAULT_SEQ = 128  # tokens per sequence for text models when --seq is not given (capped by the context)
MAX_INPUT_ELEMENTS = 1 << 28  # refuse example inputs above 256M elements (1 GiB at fp32) before allocating them
RUN_MEMORY_FRACTION = 0.25  # a measured text-model run may take a quarter of this machine's memory (two can run at once)
SPECIAL_OPS = {  # aten op-name pattern -> what to say about it
    "attention": re.compile(r"scaled_dot_product|_flash_attention|_efficient_attention|multi_head_attention"),
    "scatter/gather/sparse (graph) ops": re.compile(r"scatter|gather|index_add|index_put|index_select|_sparse|sparse_|segment_reduce|embedding_bag|bincount|coalesce"),
    "data-dependent values or shapes": re.compile(r"_local_scalar_dense|nonzero|masked_select|unique|_assert_async"),
}
CORE_NAMESPACES = ("aten", "prims", "prim", "profiler", "_c10d_functional")  # anything else is a custom op


@dataclass
class Target:
    """A module ready to run: `module(*args, **kwargs)`."""

    module: Any  # torch.nn.Module
    args: tuple
    kwargs: dict
    name: str
    source: str  # factory | transformers | archsmith
    meta: bool = False
    config: dict | None = None
    notes: list[str] = field(default_factory=list)


# ---- loading ------------------------------------------------------------------------------------

def load(model: str, batch: int = 1, seq: int | None = None, input_shapes: list[tuple[int, ...]] | None = None,
         allow_code: bool = True, meta: bool | None = None, weights: bool = True) -> Target:
    """Resolve MODEL into a Target (see the module docstring for the forms MODEL takes).

    meta None decides by size (META_ABOVE_BYTES); weights False builds from config.json only.
    """
    if not isinstance(model, str) or not model.strip():
        raise ArchsmithError("model", "must be a model directory, config.json, Hub id or file.py:factory")
    for name, value in (("batch", batch), ("seq", seq)):
        if value is not None and (not isinstance(value, int) or value < 1 or value > 1 << 20):
            raise ArchsmithError(name, f"must be an integer in [1, {1 << 20}], got {value!r}")
    match = FACTORY.match(model)
    if match:
        target = _from_factory(Path(match["file"]), match["name"], allow_code)
        if input_shapes:
            target.args, target.kwargs = _reshape_inputs(target.args, target.kwargs, input_shapes)
        return target
    if input_shapes:
        raise ArchsmithError("input_shape", "applies to file.py:factory models; text models take --batch and --seq")
    path = Path(model)
    if path.exists():
        from archsmith.hfconfig import read_config

        cfg = read_config(path)
        if "num_layers" in cfg and "num_hidden_layers" not in cfg:  # an archsmith spec, not an HF config
            return _from_spec(cfg, batch, seq, meta, model)
        has_weights = path.is_dir() and any(path.glob("*.safetensors"))
        return _from_hf(cfg, path if weights and has_weights else None, batch, seq, meta, model)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        from archsmith.hub import _check_id, api, fetch_json

        _check_id(model)
        return _from_hf(fetch_json(api(), model, "config.json"), None, batch, seq, meta, model)
    raise ArchsmithError("model", f"{model!r:.120} is neither an existing path, a Hub id (org/name) nor file.py:factory")


_FACTORY_DIRS: set[str] = set()  # directories user files were loaded from (their sibling modules are cached by name)


@contextlib.contextmanager
def sibling_imports(directory: Path):
    """`directory` first on sys.path inside the block, as `python file.py` puts a script's directory: the user's file
    imports the modules beside it (`from layers import Block`). Removed after, so it never shadows a later import."""
    import sys

    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _forget_other_siblings(directory: Path) -> None:
    """Drop modules cached from another user directory, so a same-named sibling here (two projects' `model.py`)
    is imported from this directory, not reused from the other one."""
    import sys

    here = str(directory)
    others = {d for d in _FACTORY_DIRS - {here} if d not in sys.path}  # reachable only while their file ran
    _FACTORY_DIRS.add(here)
    if not others:
        return

    def entry(name: str) -> str | None:
        """The sys.path entry a top-level module was found in."""
        path = getattr(sys.modules.get(name), "__file__", None)
        if not isinstance(path, str) or name.startswith("archsmith_user_"):
            return None
        return str(Path(path).parent.parent if Path(path).name == "__init__.py" else Path(path).parent)

    stale = [name for name in list(sys.modules) if entry(name.split(".")[0]) in others]
    for name in stale:
        sys.modules.pop(name, None)


def import_callable(ref: str, field_name: str, allow_code: bool = True) -> Callable:
    """`file.py:name` -> the function (running the file's top level); errors name `field_name`.

    The file's directory is on the import path while its top level runs and whenever the function is called, so the
    modules beside it import as they do under `python file.py`.
    """
    import functools
    import importlib.util
    import sys

    match = FACTORY.match(ref or "")
    if not match:
        raise ArchsmithError(field_name, f"must be file.py:function, got {ref!r:.120}")
    if not allow_code:
        raise ArchsmithError(field_name, "file.py:function runs Python code; this server refuses it "
                                         "(start it with ARCHSMITH_ALLOW_CODE=1 to allow code under the workspace root)")
    file = Path(match["file"]).resolve()
    if not file.is_file():
        raise ArchsmithError(field_name, f"no such file: {match['file']}")
    name = f"archsmith_user_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # classes defined there can be found again (deepcopy, pickling by reference)
    _forget_other_siblings(file.parent)
    try:
        with sibling_imports(file.parent):
            spec.loader.exec_module(module)
    except Exception as exc:
        raise ArchsmithError(field_name, f"{file.name} raised {type(exc).__name__}: {str(exc)[:200]}{_beside(exc, file)}") from None
    fn = getattr(module, match["name"], None)
    if not callable(fn):
        raise ArchsmithError(field_name, f"{file.name} has no function {match['name']!r}")

    @functools.wraps(fn)
    def with_siblings(*args, **kwargs):
        with sibling_imports(file.parent):
            return fn(*args, **kwargs)

    return with_siblings


def _beside(exc: Exception, file: Path) -> str:
    """For a module the file imports that is in none of the places searched: where it was looked for."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f" (looked beside {file.name} in {file.parent} and in the installed packages)"
    return ""


def call(fn: Callable, field_name: str, **kwargs) -> Any:
    try:
        return fn(**kwargs)
    except ArchsmithError:
        raise
    except Exception as exc:  # the user's code failed: say where, not a traceback
        raise ArchsmithError(field_name, f"{getattr(fn, '__name__', fn)}() raised {type(exc).__name__}: {str(exc)[:200]}") from None


def _from_factory(file: Path, name: str, allow_code: bool) -> Target:
    import torch

    result = call(import_callable(f"{file}:{name}", "model", allow_code), "model")
    if isinstance(result, torch.nn.Module):  # a bare module: the caller brings the inputs (prove/compress --inputs)
        return Target(result, (), {}, f"{file.name}:{name}", "factory", meta=any(p.is_meta for p in result.parameters()))
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)):
        raise ArchsmithError("model", f"{file}:{name}() must return an nn.Module or (nn.Module, example_inputs); got {type(result).__name__}")
    mod, inputs = result
    if isinstance(inputs, torch.Tensor):
        args, kwargs = (inputs,), {}
    elif isinstance(inputs, dict):
        args, kwargs = (), dict(inputs)
    elif isinstance(inputs, (tuple, list)):
        args, kwargs = tuple(inputs), {}
    else:
        raise ArchsmithError("model", f"{file}:{name}() example_inputs must be a tensor, tuple or dict; got {type(inputs).__name__}")
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    is_meta = any(t.is_meta for t in tensors) or any(p.is_meta for p in mod.parameters())
    return Target(mod, args, kwargs, f"{file.name}:{name}", "factory", meta=is_meta)


def _reshape_inputs(args: tuple, kwargs: dict, shapes: list[tuple[int, ...]]) -> tuple[tuple, dict]:
    """Replace the tensor inputs, in order, by random tensors of the given shapes (same dtype)."""
    import torch

    tensors = [(i, t) for i, t in enumerate((*args, *kwargs.values())) if isinstance(t, torch.Tensor)]
    if len(shapes) > len(tensors):
        raise ArchsmithError("input_shape", f"got {len(shapes)} shapes for {len(tensors)} tensor inputs")
    values = list((*args, *kwargs.values()))
    gen = torch.Generator().manual_seed(0)
    for (i, t), shape in zip(tensors, shapes):
        _check_size(shape, "input_shape")
        if t.dtype.is_floating_point:
            values[i] = torch.randn(shape, generator=gen, dtype=t.dtype)
        else:
            high = int(t.max()) + 1 if t.numel() else 2
            values[i] = torch.randint(0, max(high, 1), shape, generator=gen, dtype=t.dtype)
    return tuple(values[: len(args)]), dict(zip(kwargs, values[len(args):]))


def _check_size(shape: tuple[int, ...], field_name: str) -> None:
    n = 1
    for d in shape:
        if d < 1:
            raise ArchsmithError(field_name, f"dimensions must be >= 1, got {shape}")
        n *= d
    if n > MAX_INPUT_ELEMENTS:
        raise ArchsmithError(field_name, f"{shape} has {n:,} elements; at most {MAX_INPUT_ELEMENTS:,}")


def _run_bytes(params: int, vocab: int, hidden: int, layers: int, heads: int, batch: int, seq: int) -> int:
    """Rough fp32 bytes of a measured forward with saved activations: weights, logits and, per layer, a transformer
    block without fused attention (34 h + 5 heads seq bytes per token at 16 bits, Korthikanti et al. 2022; x2 at fp32)."""
    per_token = 4 * vocab + layers * 2 * (34 * hidden + 5 * heads * seq)
    return 4 * params + batch * seq * per_token


def _decide_meta(meta: bool | None, params: int, vocab: int, hidden: int, layers: int, heads: int, batch: int,
                 seq: int, notes: list[str]) -> bool:
    """The meta device when asked, for weights above META_ABOVE_BYTES, or when a measured run would not fit in
    RUN_MEMORY_FRACTION of this machine's memory; refused (naming batch and seq) when a measured run was asked for."""
    if meta:
        return True
    if params * 4 > META_ABOVE_BYTES:
        if meta is False:
            raise ArchsmithError("meta", f"{params:,} parameters are {params * 4 / 2**30:.1f} GiB at fp32, more than the "
                                         f"{META_ABOVE_BYTES / 2**30:.0f} GiB a measured run loads; analyse on the meta device")
        return True
    need = _run_bytes(params, vocab, hidden, layers, heads, batch, seq)
    limit = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * RUN_MEMORY_FRACTION)
    if need <= limit:
        return False
    if meta is False:
        raise ArchsmithError("seq", f"a measured run at batch {batch} x seq {seq} needs about {need / 2**30:.1f} GiB, more than "
                                    f"{limit / 2**30:.1f} GiB ({RUN_MEMORY_FRACTION:.0%} of this machine); lower batch or seq, or "
                                    "analyse on the meta device")
    notes.append(f"batch {batch} x seq {seq} would need about {need / 2**30:.1f} GiB to run here: analysed on the meta device "
                 "(shapes, parameters, FLOPs; no latency)")
    return True


def _text_inputs(vocab: int, context: int, batch: int, seq: int | None, meta: bool, mask: bool) -> dict:
    import torch

    seq = seq or min(DEFAULT_SEQ, context)
    if seq > context:
        raise ArchsmithError("seq", f"must be at most the model's context of {context} positions, got {seq}")
    _check_size((batch, seq), "seq")
    device = "meta" if meta else "cpu"
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    return {"input_ids": ids, **({"attention_mask": torch.ones_like(ids)} if mask else {})}


def quiet_transformers() -> None:
    """No tqdm bar while transformers loads weights: our own progress goes to stderr, errors stay one line."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def hf_class(cfg: dict):
    """The transformers class config.json's `architectures` names (a PreTrainedModel), else AutoModel."""
    import transformers

    quiet_transformers()
    arch = (cfg.get("architectures") or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) and arch.isidentifier() else None
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        return cls
    return transformers.AutoModel


def _from_hf(cfg: dict, weights_dir: Path | None, batch: int, seq: int | None, meta: bool | None, name: str) -> Target:
    import torch
    from transformers import AutoConfig

    model_type = cfg.get("model_type")
    try:
        config = AutoConfig.for_model(**cfg)
    except (ValueError, KeyError, TypeError) as exc:
        raise ArchsmithError("model_type", f"transformers cannot build {model_type!r}: {str(exc)[:160]}") from None
    cls = hf_class(cfg)
    build = cls.from_config if cls.__name__ == "AutoModel" else cls._from_config  # Auto classes vs model classes
    with torch.device("meta"):
        probe = build(config)
    params = sum(p.numel() for p in probe.parameters())
    text = getattr(config, "get_text_config", lambda: config)()
    vocab = getattr(text, "vocab_size", None)
    context = getattr(text, "max_position_embeddings", None) or 2048
    if not isinstance(vocab, int):
        raise ArchsmithError("model", f"{name}: config.json has no vocab_size; analyse it as file.py:factory with its own inputs")
    notes: list[str] = []
    shape = [getattr(text, key, None) for key in ("hidden_size", "num_hidden_layers", "num_attention_heads")]
    hidden, layers, heads = (v if isinstance(v, int) and v > 0 else 1 for v in shape)
    meta = _decide_meta(meta, params, vocab, hidden, layers, heads, batch, seq or min(DEFAULT_SEQ, context), notes)
    if meta:
        module = probe
    elif weights_dir is not None:
        module = cls.from_pretrained(weights_dir, dtype=torch.float32, use_safetensors=True)
    else:
        module = build(config)
    if not meta:
        module.float()
    kwargs = _text_inputs(vocab, context, batch, seq, meta, mask=not meta)
    if meta and cls.__name__.endswith("ForCausalLM"):  # transformers inspects 2D masks and positions with .item(): give a 4D causal mask
        S = kwargs["input_ids"].shape[1]
        kwargs["attention_mask"] = torch.ones(S, S, dtype=torch.bool, device="meta").tril()[None, None]
    if getattr(config, "use_cache", False):
        kwargs["use_cache"] = False
    if weights_dir is None and not meta:
        notes.append("built from config.json with random weights (weights do not change shapes, FLOPs or latency)")
    return Target(module, (), kwargs, name, "transformers", meta=meta, config=cfg, notes=notes)


def _from_spec(cfg: dict, batch: int, seq: int | None, meta: bool | None, name: str) -> Target:
    import torch

    from archsmith.estimate import count_params
    from archsmith.network import CausalLM, check_buildable
    from archsmith.spec import ArchitectureSpec

    try:
        spec = ArchitectureSpec.from_dict(cfg)
    except TypeError as exc:
        raise ArchsmithError("model", f"{name} is not an ArchitectureSpec: {exc}") from None
    check_buildable(spec)
    notes: list[str] = []
    meta = _decide_meta(meta, count_params(spec)["total"], spec.vocab_size, spec.hidden_size, spec.num_layers, spec.num_heads,
                        batch, seq or min(DEFAULT_SEQ, spec.context_length), notes)
    if meta:
        with torch.device("meta"):
            module = CausalLM(spec)
    else:
        module = CausalLM.from_spec(spec)
    kwargs = _text_inputs(spec.vocab_size, spec.context_length, batch, seq, meta, mask=False)
    return Target(module, (), kwargs, name, "archsmith", meta=meta, config=cfg, notes=notes)


# ---- measuring ----------------------------------------------------------------------------------

def sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of aten._scaled_dot_product_flash_attention_for_cpu (FlopCounterMode has no formula for it)."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def flop_counter(display: bool = False):
    """FlopCounterMode that also counts the CPU flash-attention kernel (read as 0 otherwise)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=display, custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu_flops})


@contextlib.contextmanager
def frozen(module):
    """No parameter of `module` requires grad inside the block (restored after).

    Under no_grad a view of a parameter still requires grad without a grad_fn, and FlopCounterMode's module
    tracker fails on one passed to a submodule (transformers 5.25 wraps functions such as Qwen3-Next's causal
    convolution in modules when the `kernels` package is installed).
    """
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def count_flops(module, args: tuple = (), kwargs: dict | None = None) -> int:
    """Forward FLOPs of `module(*args, **kwargs)` (matmuls, convolutions, attention)."""
    import torch

    with torch.no_grad(), frozen(module), flop_counter() as counter:
        module(*args, **(kwargs or {}))
    return counter.get_total_flops()


@contextlib.contextmanager
def silent_stderr():
    """File descriptor 2 to /dev/null inside the block: the profiler's C++ side prints `USDT: ... profiler_start`
    lines there that no logging setting reaches."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def median_ms(fn: Callable[[], Any], repeats: int = 5, warmup: int = 2) -> float:
    """Median wall-clock milliseconds of `fn()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _shapes(value) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        return [list(value.shape)]
    if isinstance(value, (tuple, list)):
        return [s for v in value for s in _shapes(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _shapes(v)]
    if hasattr(value, "to_tuple"):  # transformers ModelOutput
        return _shapes(value.to_tuple())
    return []


def _nbytes(value) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if hasattr(value, "to_tuple"):
        return _nbytes(value.to_tuple())
    return 0


class _Recorder:
    """Forward hooks on every module: the stack of running modules, shapes, calls, saved bytes, ops."""

    def __init__(self, root):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        self.names = {id(m): n for n, m in root.named_modules()}
        self.stack: list[str] = []
        self.rows: dict[str, dict] = {n: {"calls": 0, "input_shapes": [], "output_shapes": [], "io_bytes": 0} for n in self.names.values()}
        self.saved: dict[str, int] = dict.fromkeys(self.names.values(), 0)
        self.ops: dict[str, set[str]] = {}
        self.handles = []
        self.seen: set = set()
        self.param_ptrs = {t.untyped_storage().data_ptr() for t in (*root.parameters(), *root.buffers()) if not t.is_meta}
        recorder = self

        class Ops(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = getattr(getattr(func, "_schema", None), "name", None) or str(func)  # "aten::addmm"
                recorder.ops.setdefault(name, set()).add(recorder.stack[-1] if recorder.stack else "")
                return func(*args, **(kwargs or {}))

        self.op_mode = Ops()
        for name, module in root.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name), always_call=True))
        self.saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pre(self, name):
        def hook(module, args):
            self.stack.append(name)
            row = self.rows[name]
            row["calls"] += 1
            if row["calls"] == 1:
                row["input_shapes"] = _shapes(args)
            row["io_bytes"] += _nbytes(args)
        return hook

    def _post(self, name):
        def hook(module, args, output):
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
            row = self.rows[name]
            if row["calls"] == 1:
                row["output_shapes"] = _shapes(output)
            row["io_bytes"] += _nbytes(output)
        return hook

    def _pack(self, tensor):
        if tensor.is_meta:
            key = id(tensor)
        else:
            key = tensor.untyped_storage().data_ptr()
            if key in self.param_ptrs:
                return tensor
        if key not in self.seen:
            self.seen.add(key)
            nbytes = tensor.numel() * tensor.element_size() if tensor.is_meta else tensor.untyped_storage().nbytes()
            self.saved[self.stack[-1] if self.stack else ""] += nbytes
        return tensor

    def remove(self):
        for h in self.handles:
            h.remove()


def _profile_shares(module, args, kwargs, repeats: int) -> tuple[dict[str, float], float]:
    """(module name -> share of the measured forward time, inclusive; median forward ms without profiling)."""
    import torch
    from torch.autograd.profiler import record_function

    names = {n: f"archsmith::{n or '(root)'}" for n, _ in module.named_modules()}
    open_ranges: list = []
    handles = []
    for name, sub in module.named_modules():
        def pre(m, a, label=names[name]):
            r = record_function(label)
            r.__enter__()
            open_ranges.append(r)

        def post(m, a, o):
            if open_ranges:
                open_ranges.pop().__exit__(None, None, None)

        handles.append(sub.register_forward_pre_hook(pre))
        handles.append(sub.register_forward_hook(post, always_call=True))
    try:
        warmup = 2  # profiled but discarded: the first passes carry one-off costs (allocations, profiler start)
        schedule = torch.profiler.schedule(wait=0, warmup=warmup, active=repeats, repeat=1)
        with torch.no_grad(), silent_stderr(), \
                torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], schedule=schedule) as prof:
            for _ in range(warmup + repeats):
                module(*args, **kwargs)
                prof.step()
    finally:
        for h in handles:
            h.remove()
    totals = {e.key: e.cpu_time_total for e in prof.key_averages()}
    root = totals.get(names[""], 0.0) or 1.0
    shares = {n: totals.get(label, 0.0) / root for n, label in names.items()}
    with torch.no_grad():
        ms = median_ms(lambda: module(*args, **kwargs), repeats=repeats)
    return shares, ms


# ---- the analysis -------------------------------------------------------------------------------

def own_parameters(root) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """Parameters per module of `root` with shared tensors counted once, and the ties.

    Returns (module name -> distinct parameters under it that no earlier module holds; module name -> {its own
    parameter name: the earlier parameter it is}). A tied lm_head holds 0 of its own and maps weight to
    model.embed_tokens.weight; the root's count is the model's distinct total, and so is the sum over its children.
    """
    first = {id(p): name for name, p in root.named_parameters()}  # each tensor once, under the first name it has
    counts: dict[str, int] = {}
    tied: dict[str, dict[str, str]] = {}
    for name, module in root.named_modules():
        prefix = f"{name}." if name else ""
        counts[name] = sum(p.numel() for p in module.parameters() if first[id(p)].startswith(prefix))
        ties = {local: first[id(p)] for local, p in module.named_parameters(recurse=False) if first[id(p)] != prefix + local}
        if ties:
            tied[name] = ties
    return counts, tied


def analyze(target: Target, repeats: int = 5, top: int = 5) -> dict[str, Any]:
    """Per-module table, totals, bottlenecks and notes for `target` (see the module docstring)."""
    import torch

    module, args, kwargs = target.module, target.args, target.kwargs
    module.eval()  # dropout off, batch-norm statistics frozen: the numbers describe one deterministic pass
    recorder = _Recorder(module)
    try:
        with torch.enable_grad(), recorder.saved_hooks, flop_counter() as counter, recorder.op_mode:
            module(*args, **kwargs)
    except ArchsmithError:
        raise
    except Exception as exc:
        raise ArchsmithError("model", f"the forward pass failed: {type(exc).__name__}: {str(exc)[:240]}") from None
    finally:
        recorder.remove()
    root_class = type(module).__name__
    flops_by_name: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == root_class else key[len(root_class) + 1:] if key.startswith(root_class + ".") else None
        if name is not None and name in recorder.rows:
            flops_by_name[name] = sum(ops.values())
    shares, latency_ms = ({}, None) if target.meta else _profile_shares(module, args, kwargs, repeats)
    modules = dict(module.named_modules())
    children = {n: [f"{n}.{c}" if n else c for c, _ in m.named_children()] for n, m in modules.items()}

    def called_children(name: str) -> list[str]:
        """Children that ran; a container that never runs itself (ModuleList, ModuleDict) stands for its children."""
        return [d for c in children[name] for d in ([c] if recorder.rows[c]["calls"] else called_children(c))]
    saved_incl: dict[str, int] = {}

    def saved(name: str) -> int:
        if name not in saved_incl:
            saved_incl[name] = recorder.saved[name] + sum(saved(c) for c in children[name])
        return saved_incl[name]

    own, tied = own_parameters(module)
    rows = []
    for name, sub in modules.items():
        rec = recorder.rows[name]
        params = own[name]  # a weight tied to an earlier module's (a tied lm_head) is counted there, once
        param_bytes = sum(p.numel() * p.element_size() for p in sub.parameters())
        flops = flops_by_name.get(name, 0)
        self_flops = max(0, flops - sum(flops_by_name.get(c, 0) for c in called_children(name)))
        share = shares.get(name)
        self_share = None if share is None else max(0.0, share - sum(shares.get(c, 0.0) for c in called_children(name)))
        traffic = param_bytes + rec["io_bytes"]
        rows.append({
            "name": name or "(root)", "type": type(sub).__name__, "calls": rec["calls"],
            "input_shapes": rec["input_shapes"], "output_shapes": rec["output_shapes"],
            "params": params, "flops": flops, "self_flops": self_flops, "activation_bytes": saved(name),
            "latency_share": share, "self_latency_share": self_share,
            "arithmetic_intensity": round(flops / traffic, 3) if traffic and flops else 0.0,
            "depth": 0 if not name else name.count(".") + 1, "leaf": not children[name],
            **({"tied_to": tied[name]} if name in tied else {}),
        })
    total_params = own[""]  # distinct parameters (tied tensors once)
    total_flops = counter.get_total_flops()
    leaf_traffic = sum(r["io_bytes"] for n, r in recorder.rows.items() if not children[n]) + \
        sum(p.numel() * p.element_size() for p in module.parameters())
    totals = {
        "params": total_params,
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "param_bytes": sum(p.numel() * p.element_size() for p in module.parameters()),
        "buffer_bytes": sum(b.numel() * b.element_size() for b in module.buffers()),
        "forward_flops": total_flops,
        "activation_bytes": saved(""),
        "latency_ms": latency_ms,
        "arithmetic_intensity": round(total_flops / leaf_traffic, 3) if leaf_traffic else 0.0,
        "modules": len(modules),
    }
    called = [r for r in rows if r["calls"] and r["name"] != "(root)"]
    by_flops = sorted((r for r in called if r["self_flops"]), key=lambda r: -r["self_flops"])[:top]
    by_time = [] if target.meta else sorted(called, key=lambda r: -(r["self_latency_share"] or 0))[:top]
    by_type: dict[str, dict[str, Any]] = {}
    for r in called:  # own FLOPs and own time summed per module class: "where does it go" in one line each
        row = by_type.setdefault(r["type"], {"type": r["type"], "modules": 0, "flops": 0, "latency_share": 0.0})
        row["modules"] += 1
        row["flops"] += r["self_flops"]
        row["latency_share"] += r["self_latency_share"] or 0.0
    inputs = {k: list(v.shape) for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    inputs.update({f"arg{i}": list(v.shape) for i, v in enumerate(args) if isinstance(v, torch.Tensor)})
    return {
        "model": target.name, "source": target.source, "device": "meta" if target.meta else "cpu",
        "inputs": inputs, "totals": totals, "layers": rows,
        "bottlenecks": {
            "by_flops": [{"name": r["name"], "type": r["type"], "flops": r["self_flops"],
                          "share": round(r["self_flops"] / total_flops, 4) if total_flops else 0.0} for r in by_flops],
            "by_time": [{"name": r["name"], "type": r["type"], "share": round(r["self_latency_share"] or 0, 4)} for r in by_time],
            "by_type": sorted(({**t, "latency_share": round(t["latency_share"], 4)} for t in by_type.values()),
                              key=lambda t: (-t["latency_share"], -t["flops"])),
        },
        "notes": target.notes + _notes(recorder.ops, target.meta),
    }


def _notes(ops: dict[str, set[str]], meta: bool) -> list[str]:
    """Say what the numbers cannot show: attention kernels, graph ops, custom ops, data-dependent flow."""
    notes = ["FLOPs are FlopCounterMode's: matmuls, convolutions and attention (the CPU flash kernel counted with "
             "archsmith's formula); element-wise ops, norms, softmax, gathers and scatters count 0",
             "arithmetic intensity = FLOPs / bytes of weights, inputs and outputs each module touches once; "
             "activation bytes are the tensors autograd saves for backward (eval mode, parameters excluded)"]
    if meta:
        notes.append("analysed on the meta device: no weights allocated, so no latency; saved-activation bytes follow "
                     "the math attention path and count views separately (an upper bound)")

    def where(op: str) -> str:
        places = sorted(m or "(root)" for m in ops[op])
        return ", ".join(places[:3]) + (f" (+{len(places) - 3} more)" if len(places) > 3 else "")

    for label, pattern in SPECIAL_OPS.items():
        found = sorted(op for op in ops if pattern.search(op))
        if found:
            what = {"attention": "fused attention kernels",
                    "scatter/gather/sparse (graph) ops": "memory-bound, 0 FLOPs in the count; irregular access",
                    "data-dependent values or shapes": "a tensor value steers Python (.item(), bool(), nonzero): "
                                                       "torch.export/ONNX need it static or torch.cond"}[label]
            notes.append(f"{label}: " + "; ".join(f"{op} in {where(op)}" for op in found[:4]) + f" - {what}")
    custom = sorted(op for op in ops if op.split("::")[0] not in CORE_NAMESPACES)
    if custom:
        notes.append("custom ops: " + "; ".join(f"{op} in {where(op)}" for op in custom[:4]) +
                     " - no FLOP formula; exporters need a translation for each")
    return notes


def run(model: str, batch: int = 1, seq: int | None = None, input_shapes: list[tuple[int, ...]] | None = None,
        allow_code: bool = True, meta: bool | None = None, repeats: int = 5, top: int = 5) -> dict[str, Any]:
    """load() then analyze(): the CLI's and MCP tool's one call."""
    if not isinstance(repeats, int) or not 1 <= repeats <= 1000:
        raise ArchsmithError("repeats", f"must be an integer in [1, 1000], got {repeats!r}")
    target = load(model, batch, seq, input_shapes, allow_code, meta)
    if not target.args and not target.kwargs:
        raise ArchsmithError("model", f"{model} returned a module without example inputs: return (module, example_inputs)")
    return analyze(target, repeats=repeats, top=top)


def parse_shape(text: str) -> tuple[int, ...]:
    """'8,3,32,32' or '8x3x32x32' -> (8, 3, 32, 32)."""
    parts = re.split(r"[,x ]+", text.strip())
    if not parts or not all(p.isdigit() for p in parts):
        raise ArchsmithError("input_shape", f"must be comma-separated positive integers like 8,3,32,32; got {text!r:.60}")
    return tuple(int(p) for p in parts)


def chart(result: dict[str, Any], top: int = 10) -> Callable[[Path], None]:
    """A writer for a PNG: the top modules by own FLOPs and by own share of latency."""
    def write(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        called = [r for r in result["layers"] if r["calls"] and r["name"] != "(root)"]
        panels = [("own FLOPs (G)", sorted(called, key=lambda r: -r["self_flops"])[:top], lambda r: r["self_flops"] / 1e9)]
        if result["totals"]["latency_ms"] is not None:
            panels.append(("own share of latency (%)", sorted(called, key=lambda r: -(r["self_latency_share"] or 0))[:top],
                           lambda r: 100 * (r["self_latency_share"] or 0)))
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
        for ax, (title, rows, value) in zip(axes[0], panels):
            ax.barh([r["name"][-40:] for r in rows][::-1], [value(r) for r in rows][::-1], color="#4c72b0")
            ax.set_title(title)
            ax.tick_params(axis="y", labelsize=7)
        fig.suptitle(f"{result['model']}: inputs {result['inputs']}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
        plt.close(fig)

    return write
