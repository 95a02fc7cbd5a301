"""Students of any `nn.Module`: a factory's size knobs searched, or structured pruning through torch-pruning.

The teacher is `file.py:factory` (its integer keyword arguments are its size knobs; it returns a module, or
`(module, example_inputs)` as `analyze` takes it) or a transformers model directory with safetensors weights (image
classifiers, ...: whatever `archsmith.analyze.hf_class` loads; the module returns `logits`, else
`last_hidden_state`). Batches are a dict of tensors (`module(**batch)`) or a tuple (`module(*batch)`).

Two routes to `1 - reduction` of the teacher's parameters:
- knobs (a factory with size knobs: PyG hidden sizes, e3nn multiplicities and `lmax`, layer counts): the knobs are
  searched for the target by instantiating the factory (meta device where it allows), wide knobs (>= 16, in
  multiples of 8) first, small ones (< 16: depth, `lmax`) only if the wide ones cannot land; the student is the same
  architecture, initialised from the teacher by slicing every tensor whose shape allows it;
- prune (anything else): depth by dropping repeated blocks (children of a `ModuleList` / `Sequential` of like
  blocks, never the first) whose removal changes the output least on the calibration batches, then width through
  torch-pruning's dependency graph (channels, hidden units and attention heads coupled across residuals and
  concatenations), ranked by Taylor importance |w * dL/dw| with L the mean squared output on the calibration
  batches, with a per-layer ratio rising from early layers (x0.6) to late ones (x1.4); the base ratio is bisected
  to the exact target. The output layer keeps its width.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from archsmith.analyze import FACTORY, call, import_callable
from archsmith.errors import ArchsmithError

TOLERANCE = 0.05  # a student lands within 5 points of the reduction asked for, or the nearest feasible are named
ROUND_TO = 8  # widths found by pruning or knob search are multiples of this
EARLY, LATE = 0.6, 1.4  # per-layer pruning ratio multiplier at the first and at the last prunable layer
DEPTH_SHARE = 0.5  # strategy "both": the share of the removed parameters taken by dropping blocks (half each way)
HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads")  # a module holding attention heads names its count so
HEAD_PROJECTION = re.compile(r"(^|_)(q|k|v|qkv|query|key|value)(_proj)?$")  # ... and its projections into heads so
BISECTIONS = 11  # halvings of the pruning-ratio interval: 0.95 / 2^11 < 0.0005
MAX_SEARCH = 400  # factory instantiations a knob search may make
CALIBRATION_BATCHES = 8  # batches for importance; held-out batches are the data's last quarter (at least 2)
ROUTES = ("auto", "knobs", "prune")
IMAGE_SIZE = 224  # example images for a transformers image model whose config names no size


# ---- user code and batches ------------------------------------------------------------------------

def check_batch(value: Any, field_name: str) -> dict | tuple:
    """A dict or tuple of tensors (a single tensor becomes a 1-tuple)."""
    import torch

    if isinstance(value, torch.Tensor):
        value = (value,)
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        items = value.values()
    elif isinstance(value, tuple) and value:
        items = value
    else:
        raise ArchsmithError(field_name, f"a batch must be a tensor, a tuple or a dict of tensors; got {type(value).__name__}")
    if not all(isinstance(t, torch.Tensor) for t in items):
        raise ArchsmithError(field_name, "every value of a batch must be a tensor")
    return value


def run(module, batch: dict | tuple):
    return module(**batch) if isinstance(batch, dict) else module(*batch)


def outputs(value) -> list:
    """The float tensors a forward returned, in order (tensor, tuple/list, dict, transformers ModelOutput or a
    dataclass such as network.CausalLMOutput)."""
    import dataclasses

    import torch

    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in outputs(v)]
    return []


def has_forces(batch, first_outputs: list) -> bool:
    """Batches with positions `pos` (N, 3) and scalar outputs (energies): forces -dE/dpos are matched too."""
    import torch

    pos = batch.get("pos") if isinstance(batch, dict) else None
    return (isinstance(pos, torch.Tensor) and pos.is_floating_point() and pos.dim() == 2 and pos.shape[1] == 3
            and all(not (o.dim() and o.shape[-1] == 3) for o in first_outputs))


def outputs_and_forces(model, batch: dict, create_graph: bool):
    """(output tensors, forces -d(sum of outputs)/d pos); without `create_graph` both are detached (the teacher)."""
    import torch

    pos = batch["pos"].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        outs = outputs(run(model, {**batch, "pos": pos}))
        (grad,) = torch.autograd.grad(sum(o.sum() for o in outs), pos, create_graph=create_graph)
    return (outs, -grad) if create_graph else ([o.detach() for o in outs], -grad.detach())


def variant(batch: dict | tuple, seed: int) -> dict | tuple:
    """The batch with its float tensors redrawn (same mean and spread), integer tensors (indices, edges) kept."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def redraw(t):
        if not t.is_floating_point():
            return t
        return torch.randn(t.shape, generator=gen, dtype=t.dtype) * t.std().clamp_min(1e-3) + t.mean()

    return {k: redraw(v) for k, v in batch.items()} if isinstance(batch, dict) else tuple(redraw(v) for v in batch)


def hf_outputs(model):
    """A transformers model as forward(**batch) -> logits (else last_hidden_state): one tensor, as export wants."""
    import torch

    class HFOutputs(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, *args, **kwargs):
            out = self.model(*args, **kwargs)
            return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state

    return HFOutputs(model)


# ---- the teacher -----------------------------------------------------------------------------------

@dataclass
class Source:
    """How to build the architecture again: a factory and its knobs, or a transformers model directory."""

    kind: str  # "factory" | "transformers"
    ref: str  # "/abs/path/file.py:name" or the model directory (absolute)
    knobs: dict[str, int] = field(default_factory=dict)  # the factory's integer keyword arguments, as called
    factory: Callable | None = field(default=None, repr=False, compare=False)  # the imported function, once imported

    def build(self, knobs: dict[str, int] | None = None, weights: bool = False, allow_code: bool = True):
        """(module, example batch or None): a fresh module (random init; `weights` loads a transformers model's).
        A factory runs the user's code: refused unless `allow_code`."""
        import torch

        if self.kind == "factory":
            if self.factory is None or not allow_code:  # the file's top level runs once per Source, not once per build
                self.factory = import_callable(self.ref, "model", allow_code)
            result = call(self.factory, "model", **{**self.knobs, **(knobs or {})})
            module, example = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
            if not isinstance(module, torch.nn.Module):
                raise ArchsmithError("model", f"{self.ref} must return an nn.Module or (nn.Module, example_inputs)")
            return module.eval(), None if example is None else check_batch(example, "model")
        from transformers import AutoConfig

        from archsmith.analyze import hf_class, quiet_transformers
        from archsmith.hfconfig import read_config

        quiet_transformers()
        cls = hf_class(read_config(Path(self.ref)))
        if weights:
            model = cls.from_pretrained(self.ref, dtype=torch.float32, use_safetensors=True)
        else:
            model = cls._from_config(AutoConfig.from_pretrained(self.ref), dtype=torch.float32)
        config = model.config
        example = None
        if getattr(config, "num_channels", None):  # an image model: two images at its size (CNNs name none: 224)
            size = getattr(config, "image_size", None) or IMAGE_SIZE
            size = size if isinstance(size, int) else size[0]
            gen = torch.Generator().manual_seed(0)
            example = {"pixel_values": torch.randn(2, config.num_channels, size, size, generator=gen)}
        return hf_outputs(model).eval(), example

    def as_dict(self) -> dict:
        return {"kind": self.kind, "ref": self.ref, "knobs": dict(self.knobs)}


def size_knobs(fn: Callable) -> dict[str, int]:
    """The factory's integer keyword arguments with their defaults: its size knobs."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if type(p.default) is int and p.default >= 1}


def load_source(model: str | Path, allow_code: bool = True) -> Source:
    text = str(model)
    match = FACTORY.match(text)
    if match:
        ref = f"{Path(match['file']).resolve()}:{match['name']}"
        fn = import_callable(ref, "model", allow_code)
        return Source("factory", ref, size_knobs(fn), fn)
    path = Path(text)
    if path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return Source("transformers", str(path.resolve()))
    raise ArchsmithError("model", f"must be file.py:factory or a model directory with config.json and safetensors "
                                  f"weights; got {text!r:.120}")


def batches_from(data: str | None, example: dict | tuple, allow_code: bool) -> list:
    """`--data file.py:fn` (an iterable of batches, up to 256) or the example batch and 15 redrawn variants."""
    if data is None:
        return [example] + [variant(example, seed) for seed in range(1, 16)]
    found = call(import_callable(data, "data", allow_code), "data")
    batches = []
    for item in found:
        batches.append(check_batch(item, "data"))
        if len(batches) >= 256:
            break
    if len(batches) < 4:
        raise ArchsmithError("data", f"needs at least 4 batches (calibration and held-out), got {len(batches)}")
    return batches


def split(batches: list) -> tuple[list, list]:
    """(calibration, held-out): the last quarter (at least 2) is held out."""
    held = max(2, len(batches) // 4)
    return batches[:-held][:CALIBRATION_BATCHES * 4], batches[-held:]


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- route 1: size knobs -----------------------------------------------------------------------------

def knob_values(default: int) -> list[int]:
    """Candidate values of a knob, largest first: multiples of ROUND_TO for wide knobs, down to half for small ones."""
    if default >= 2 * ROUND_TO:
        values = list(range(default - default % ROUND_TO, ROUND_TO - 1, -ROUND_TO))
        return [default] + [v for v in values if v != default]
    return list(range(default, max(1, math.ceil(default / 2)) - 1, -1))


def search_knobs(source: Source, reduction: float, strategy: str, teacher_params: int,
                 progress: Callable[[str], None]) -> tuple[dict[str, int], int]:
    """The knobs whose parameter count lands nearest `(1 - reduction) * teacher_params` (within TOLERANCE)."""
    import itertools

    import torch

    knobs = source.knobs
    wide = [k for k, v in knobs.items() if v >= 2 * ROUND_TO]
    small = [k for k in knobs if k not in wide]
    cache: dict[tuple, int] = {}

    def count(choice: dict[str, int]) -> int:
        key = tuple(sorted(choice.items()))
        if key not in cache:
            if len(cache) >= MAX_SEARCH:
                return -1
            try:
                with torch.device("meta"):
                    module, _ = source.build(choice)
            except Exception:  # some libraries compute in __init__; build it for real
                module, _ = source.build(choice)
            cache[key] = param_count(module)
        return cache[key]

    def scaled(scale: float) -> dict[str, int]:
        return {k: max(ROUND_TO, round(knobs[k] * scale / ROUND_TO) * ROUND_TO) for k in wide}

    target = (1 - reduction) * teacher_params
    smalls = [dict(zip(small, combo)) for combo in itertools.product(*(knob_values(knobs[k]) for k in small))]
    smalls.sort(key=lambda c: sum(knobs[k] - c[k] for k in small))  # fewest steps away from the teacher first
    phases = {"width": [smalls[0]], "depth": smalls, "both": smalls}[strategy] if small else [{}]
    scales = [s / 100 for s in range(100, 4, -1)] if wide and strategy != "depth" else [1.0]
    tried: list[tuple[float, dict[str, int]]] = []
    progress(f"searching size knobs {', '.join(f'{k}={v}' for k, v in knobs.items())} for {reduction:.0%} fewer parameters")
    for fixed in phases:
        for scale in scales:
            choice = {**knobs, **fixed, **scaled(scale)}
            n = count(choice)
            if n < 0:
                break
            tried.append((1 - n / teacher_params, choice))
            if n < target and wide:
                break  # smaller scales only shrink further
        hits = [t for t in tried if abs(t[0] - reduction) <= TOLERANCE]
        if hits:
            best = min(hits, key=lambda t: abs(t[0] - reduction))
            return best[1], count(best[1])
    below = max((t for t in tried if t[0] < reduction), default=None, key=lambda t: t[0])
    above = min((t for t in tried if t[0] > reduction), default=None, key=lambda t: t[0])
    near = " or ".join(f"{r:.0%} ({', '.join(f'{k}={v}' for k, v in c.items())})" for r, c in filter(None, (below, above)))
    raise ArchsmithError("reduction", f"{reduction:.0%} is not reachable within {TOLERANCE:.0%} by the size knobs with "
                                      f"strategy {strategy!r}; nearest feasible: {near or 'none'}")


def slice_init(student, teacher_state: dict) -> tuple[int, int]:
    """Copy the teacher's leading block into every student tensor of the same name and rank that fits in it.
    Returns (tensors initialised, tensors in the student)."""
    import torch

    done = 0
    state = student.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            source = teacher_state.get(name)
            if source is None or source.dim() != tensor.dim() or any(s > t for s, t in zip(tensor.shape, source.shape)):
                continue
            tensor.copy_(source[tuple(slice(0, s) for s in tensor.shape)])
            done += 1
    return done, len(state)


# ---- route 2: pruning --------------------------------------------------------------------------------

def repeated_blocks(module) -> list[tuple[str, int]]:
    """(container, index) of every child of a ModuleList / Sequential holding at least three of its kind, but the
    first of its kind (it often changes the shape: stride, projection)."""
    import torch
    from collections import Counter

    found = []
    for name, container in module.named_modules():
        if isinstance(container, (torch.nn.ModuleList, torch.nn.Sequential)) and len(container) >= 3:
            kinds = Counter(type(c) for c in container)
            seen: set[type] = set()
            for i, child in enumerate(container):
                if kinds[type(child)] >= 3 and type(child) in seen:
                    found.append((name, i))
                seen.add(type(child))
    return found


def drop_blocks(module, blocks: list[tuple[str, int]]) -> None:
    """Delete the blocks (container, index) in place; later indices first so earlier ones stay valid."""
    containers = dict(module.named_modules())
    for name, index in sorted(blocks, key=lambda b: (b[0], -b[1])):
        del containers[name][index]


def _relative_change(a: list, b: list) -> float:
    return max(float((x - y).norm() / x.norm().clamp_min(1e-12)) for x, y in zip(a, b))


def block_importance(module, blocks: list[tuple[str, int]], calibration: list) -> dict[tuple[str, int], float]:
    """How much the output moves when a block is removed alone (relative L2, worst calibration batch); blocks whose
    removal breaks the forward or changes the output's shape are left out."""
    import torch

    with torch.no_grad():
        reference = [outputs(run(module, b)) for b in calibration[:2]]
        scores = {}
        for block in blocks:
            trial = copy.deepcopy(module)
            drop_blocks(trial, [block])
            try:
                got = [outputs(run(trial, b)) for b in calibration[:2]]
            except Exception:
                continue
            if all(len(g) == len(r) and all(x.shape == y.shape for x, y in zip(g, r)) for g, r in zip(got, reference)):
                scores[block] = max(_relative_change(r, g) for r, g in zip(reference, got))
    return scores


def choose_blocks(module, scores: dict, remove: int) -> list[tuple[str, int]]:
    """The least important blocks, at most half of each container, until `remove` parameters are gone."""
    containers = dict(module.named_modules())
    chosen, gone, per = [], 0, {}
    for block in sorted(scores, key=lambda b: scores[b]):
        name, index = block
        if gone >= remove or per.get(name, 0) + 1 > len(containers[name]) // 2:
            continue
        chosen.append(block)
        per[name] = per.get(name, 0) + 1
        gone += param_count(containers[name][index])
    return chosen


def head_groups(module) -> dict:
    """{projection Linear: heads} for attention modules (a HEAD_ATTRS count and q/k/v projections)."""
    import torch

    groups = {}
    for sub in module.modules():
        heads = next((getattr(sub, a) for a in HEAD_ATTRS if isinstance(getattr(sub, a, None), int)), None)
        if not heads:
            continue
        for name, child in sub.named_children():
            if isinstance(child, torch.nn.Linear) and HEAD_PROJECTION.search(name) and child.out_features % heads == 0:
                groups[child] = heads
    return groups


def forward_calls(module, batch, select: Callable[[Any], bool]) -> tuple[Any, list[tuple[Any, list]]]:
    """One forward on `batch`: (its output, [(submodule, its float outputs)] for every call of a submodule `select`
    accepts, in the order they ran; a shared submodule once per call)."""
    calls: list[tuple[Any, list]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, outputs(o)))) for m in module.modules() if select(m)]
    try:
        return run(module, batch), calls
    finally:
        for h in hooks:
            h.remove()


def prunable(m) -> bool:
    import torch

    return isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))


def _pruner(module, batch, ratio: float, importance):
    """torch-pruning's MetaPruner at base `ratio`, scaled from EARLY to LATE over the prunable layers in run order;
    the last layer to run sets the output's width, so it is never pruned."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        calls = [m for m, _ in forward_calls(module, batch, prunable)[1]]
    ignored = calls[-1:]
    order = [m for m in dict.fromkeys(calls) if m not in ignored]
    ratios = {m: min(0.95, ratio * (EARLY + (LATE - EARLY) * i / max(1, len(order) - 1))) for i, m in enumerate(order)}
    heads = head_groups(module)
    forward = (lambda m, b: m(**b)) if isinstance(batch, dict) else (lambda m, b: m(*b))
    return tp.pruner.MetaPruner(module, batch, importance=importance, pruning_ratio=ratio, pruning_ratio_dict=ratios,
                                ignored_layers=ignored, round_to=ROUND_TO, num_heads=heads, prune_num_heads=bool(heads),
                                prune_head_dims=not heads, forward_fn=forward), heads


def prune_width(module, batch, ratio: float, calibration: list | None = None):
    """Prune `module` in place at base `ratio` (Taylor importance on `calibration`, else magnitude); heads counts
    updated on the attention modules."""
    import warnings

    import torch
    import torch_pruning as tp

    importance = tp.importance.GroupTaylorImportance() if calibration else tp.importance.GroupMagnitudeImportance(p=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner, heads = _pruner(module, batch, ratio, importance)
        if calibration:
            module.zero_grad()
            with torch.enable_grad():
                for b in calibration:
                    loss = sum(t.pow(2).mean() for t in outputs(run(module, b))) / len(calibration)
                    loss.backward()
        pruner.step()
        module.zero_grad(set_to_none=True)
    for sub in module.modules():
        attr = next((a for a in HEAD_ATTRS if isinstance(getattr(sub, a, None), int)), None)
        projection = next((c for c in sub.children() if c in heads), None)
        if attr and projection is not None:
            setattr(sub, attr, pruner.num_heads.get(projection, getattr(sub, attr)))


def width_ratio(module, batch, target: int) -> tuple[float, int]:
    """The base ratio whose pruned parameter count is nearest `target` (bisection, magnitude importance)."""
    low, high, best = 0.0, 0.95, (0.0, param_count(module))
    for _ in range(BISECTIONS):
        mid = (low + high) / 2
        trial = copy.deepcopy(module)
        prune_width(trial, batch, mid)
        n = param_count(trial)
        if abs(n - target) < abs(best[1] - target):
            best = (mid, n)
        low, high = (mid, high) if n > target else (low, mid)
    return best


def simple_attributes(module) -> dict[str, dict[str, Any]]:
    """Every module's int / float / bool / tuple-of-int attributes: what pruning rewrites besides tensors."""
    def simple(v) -> bool:
        return isinstance(v, (int, float, bool)) or (isinstance(v, tuple) and all(isinstance(x, int) for x in v))

    return {name: {k: v for k, v in vars(m).items() if not k.startswith("_") and simple(v)}
            for name, m in module.named_modules()}


def changed_attributes(before: dict, after: dict) -> dict[str, dict[str, Any]]:
    return {name: diff for name, attrs in after.items()
            if (diff := {k: v for k, v in attrs.items() if before.get(name, {}).get(k) != v})}


def apply_structure(module, removed: list, attributes: dict, shapes: dict) -> None:
    """Make a freshly built teacher the student's shape: drop blocks, set attributes, resize tensors (empty)."""
    import torch

    drop_blocks(module, [tuple(b) for b in removed])
    modules = dict(module.named_modules())
    for name, attrs in attributes.items():
        for key, value in attrs.items():
            setattr(modules[name], key, tuple(value) if isinstance(value, list) else value)
    state = module.state_dict()
    for name, shape in shapes.items():
        if name in state and list(state[name].shape) == list(shape):
            continue
        owner, _, attr = name.rpartition(".")
        sub = modules[owner]
        old = getattr(sub, attr)
        fresh = torch.empty(shape, dtype=old.dtype)
        if isinstance(old, torch.nn.Parameter):
            setattr(sub, attr, torch.nn.Parameter(fresh, requires_grad=old.requires_grad))
        else:
            sub._buffers[attr] = fresh
