"""v2: operation rewrites, one registry row each (name, rationale, where it applies, how), and an int8 audit.

Rewrites replace modules by type, so the same rows applied to a freshly built teacher rebuild the student's layout
(student.json lists them). `compress --v2` applies them before v1 reaches the parameter target, and measures each
one's effect on CPU latency where it is applied. Message passing needs no row: PyG 2.x already aggregates with
torch's native scatter / index_add.
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


LINEAR_ATTENTION = "archsmith_linear"  # the name our linear attention is registered under in transformers


def linear_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Linear attention (Katharopoulos et al. 2020) as a transformers attention function: phi(q) (phi(k)^T v) /
    (phi(q) . sum_s phi(k)), phi = elu + 1; O(seq x head_dim^2) instead of O(seq^2 x head_dim).
    query, key, value: (batch, heads, seq, head_dim) -> ((batch, seq, heads, head_dim), no weights)."""
    import torch
    import torch.nn.functional as F

    from archsmith.errors import ArchsmithError

    if attention_mask is not None or kwargs.get("is_causal") or getattr(module, "is_causal", False):
        raise ArchsmithError("v2", "linear attention replaces unmasked, bidirectional attention (vision encoders); this "
                                   "model masks or is causal")
    if key.shape[1] != query.shape[1]:  # grouped KV heads
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    q, k = F.elu(query) + 1, F.elu(key) + 1
    kv = torch.einsum("bhsd,bhse->bhde", k, value)
    norm = torch.einsum("bhsd,bhd->bhs", q, k.sum(2)).clamp_min(1e-6)
    out = torch.einsum("bhsd,bhde->bhse", q, kv) / norm.unsqueeze(-1)
    return out.transpose(1, 2).contiguous(), None


def _uses_attention_interface(m) -> bool:
    """A transformers model with attention modules that dispatch through its AttentionInterface."""
    from archsmith.compress.modules import HEAD_ATTRS

    can = getattr(m, "_can_set_attn_implementation", None)
    return (callable(can) and can() and getattr(m.config, "_attn_implementation", None) != LINEAR_ATTENTION
            and any(isinstance(getattr(sub, a, None), int) for sub in m.modules() for a in HEAD_ATTRS))


def _linear(model):
    from transformers import AttentionInterface

    AttentionInterface.register(LINEAR_ATTENTION, linear_attention)
    model.set_attn_implementation(LINEAR_ATTENTION)
    return model


REWRITES = (
    Rewrite("linear-attention", "softmax attention -> linear attention (elu + 1 features) through transformers' "
            "AttentionInterface: cost linear in the sequence length, projections kept; needs distillation",
            _uses_attention_interface, _linear),
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
    """Qualified names of the modules `row` replaces, the largest (by parameters) first; a module inside one already
    listed is left to it (a transformers model sets its submodels' attention)."""
    found = [(name, sum(p.numel() for p in m.parameters())) for name, m in module.named_modules() if name and row.matches(m)]
    names: list[str] = []
    for name, _ in sorted(found, key=lambda f: -f[1]):
        if not any(name.startswith(outer + ".") for outer in names):
            names.append(name)
    return names


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
