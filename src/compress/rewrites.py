"""v2: operation rewrites, one registry row each (name, rationale, where it applies, how), and an int8 audit.

Rewrites replace modules by type, so the same rows applied to a freshly built teacher rebuild the student's layout
(student.json lists them). `compress --v2` applies them before v1 reaches the parameter target, and measures each
one's effect on CPU latency where it is applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

SEPARABLE_MIN_CHANNELS = 16  # dense convolutions narrower than this are left alone (the split would not pay)


@dataclass(frozen=True)
class Rewrite:
    name: str
    rationale: str
    matches: Callable[[Any], bool]  # module -> does this row replace it
    replace: Callable[[Any], Any]  # module -> its replacement (weights carried over where they map)


def _is_erf_gelu(m) -> bool:
    import torch

    if isinstance(m, torch.nn.GELU):
        return m.approximate == "none"
    return type(m).__name__ == "GELUActivation"  # transformers' erf-GELU module


def _tanh_gelu(m):
    import torch

    return torch.nn.GELU(approximate="tanh")


def _is_dense_conv(m) -> bool:
    import torch

    return (type(m) is torch.nn.Conv2d and m.groups == 1 and max(m.kernel_size) > 1
            and min(m.in_channels, m.out_channels) >= SEPARABLE_MIN_CHANNELS and m.padding_mode == "zeros")


def _separable(conv):
    """Depthwise k x k then pointwise 1 x 1, started at the best rank-1 split of each input channel's filters
    (SVD of W[:, i] as out x k^2)."""
    import torch

    depthwise = torch.nn.Conv2d(conv.in_channels, conv.in_channels, conv.kernel_size, conv.stride, conv.padding,
                                conv.dilation, groups=conv.in_channels, bias=False)
    pointwise = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
    with torch.no_grad():
        w = conv.weight.permute(1, 0, 2, 3).reshape(conv.in_channels, conv.out_channels, -1)  # (in, out, k^2)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        depthwise.weight.copy_(vh[:, 0, :].reshape(conv.in_channels, 1, *conv.kernel_size))
        pointwise.weight.copy_((u[:, :, 0] * s[:, :1]).t()[:, :, None, None])
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias)
    return torch.nn.Sequential(depthwise, pointwise)


REWRITES = (
    Rewrite("tanh-gelu", "erf-GELU -> tanh-GELU: one fused op in ONNX Runtime and cheaper on CPU; within 1e-3 of erf",
            _is_erf_gelu, _tanh_gelu),
    Rewrite("depthwise-separable", f"dense k x k convolutions (>= {SEPARABLE_MIN_CHANNELS} channels) -> depthwise k x k + "
            "pointwise 1 x 1: about k^2 times fewer multiply-adds, started at each filter bank's best rank-1 split",
            _is_dense_conv, _separable),
)
INT8_RISKS = {  # module class name fragment -> why int8 hurts it
    "LayerNorm": "normalisation divides by a small variance: keep it in fp16/fp32",
    "GroupNorm": "normalisation divides by a small variance: keep it in fp16/fp32",
    "Softmax": "exponentials of int8 logits saturate: keep attention scores in fp16/fp32",
    "TensorProduct": "sums over many Clebsch-Gordan paths lose precision at 8 bits: keep equivariant products in fp16/fp32",
    "Attention": "softmax over quantised scores: keep the score path in fp16/fp32",
    "Conv": "per-channel weight scales needed (depthwise filters vary widely)",
}


def sites(module, row: Rewrite) -> list[str]:
    """Qualified names of the modules `row` replaces, the largest (by parameters) first."""
    found = [(name, sum(p.numel() for p in m.parameters())) for name, m in module.named_modules() if name and row.matches(m)]
    return [name for name, _ in sorted(found, key=lambda f: -f[1])]


def replace_at(module, row: Rewrite, names: list[str]) -> None:
    """Replace the modules at `names` (qualified) by `row`'s replacement."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        setattr(parent, child, row.replace(getattr(parent, child)))


def apply(module, example, keep_above: int = 0) -> list[dict[str, Any]]:
    """Apply every row to `module` in place, site by site, skipping a site that would take the parameter count
    below `keep_above`; each applied row with its sites and the CPU latency ratio it caused (after / before,
    median of 5 on `example`)."""
    import torch

    from archsmith.analyze import median_ms
    from archsmith.compress.modules import param_count, run

    applied = []
    for row in REWRITES:
        candidates = sites(module, row)
        if not candidates:
            continue
        with torch.no_grad():
            before = median_ms(lambda: run(module, example), repeats=5)
            done = []
            for name in candidates:
                original = module.get_submodule(name)
                replace_at(module, row, [name])
                if param_count(module) < keep_above:
                    parent_name, _, child = name.rpartition(".")
                    setattr(module.get_submodule(parent_name), child, original)
                    continue
                done.append(name)
            after = median_ms(lambda: run(module, example), repeats=5)
        if done:
            applied.append({"name": row.name, "sites": done, "rationale": row.rationale,
                            "latency_ratio": round(after / before, 3)})
    return applied


def int8_audit(module) -> list[dict[str, str]]:
    """Modules whose operations are unstable or lossy under int8, with why."""
    found = []
    for name, sub in module.named_modules():
        kind = type(sub).__name__
        why = next((reason for fragment, reason in INT8_RISKS.items() if fragment in kind), None)
        if why and name:
            found.append({"module": name, "type": kind, "why": why})
    return found
