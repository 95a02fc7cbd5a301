"""Symmetries measured, not assumed: node permutations and 3-D rotations, in float64.

Batches are dicts in PyG's names: `x` (nodes, features) and/or `pos` (nodes, 3) give the node count; every tensor
whose first dimension is the node count is a per-node tensor; `edge_index` (2, edges) holds node indices.

- permutation: the nodes are shuffled (per-node tensors reordered, `edge_index` relabelled); outputs with the node
  count as first dimension must be reordered the same way, the others must not change;
- rotation: `pos` is rotated by a random proper rotation R; outputs whose last dimension is 3 must rotate (v R^T),
  the others must not change; the forces -d(sum of scalar outputs)/d pos must rotate too.

Errors are max |difference| / max |reference|, worst over the batches checked; SYMMETRY_TOL (1e-5) is the bar.
"""

from __future__ import annotations

import copy
from typing import Any

from archsmith.compress.modules import outputs, run
from archsmith.errors import ArchsmithError

KINDS = ("permutation", "rotation")
SYMMETRY_TOL = 1e-5


def _nodes(batch: dict, kind: str) -> int:
    if not isinstance(batch, dict):
        raise ArchsmithError("invariance", "needs batches that are dicts of tensors named as in PyG (x, pos, edge_index)")
    if kind == "rotation" and ("pos" not in batch or batch["pos"].dim() != 2 or batch["pos"].shape[1] != 3):
        raise ArchsmithError("invariance", "rotation needs a 'pos' tensor of shape (nodes, 3) in each batch")
    key = "pos" if "pos" in batch else "x" if "x" in batch else None
    if key is None:
        raise ArchsmithError("invariance", "permutation needs an 'x' or 'pos' tensor (nodes first) in each batch")
    return batch[key].shape[0]


def _double(batch: dict) -> dict:
    return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}


def _error(got, want) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def rotation_matrix(seed: int):
    """A random proper rotation (det +1), float64."""
    import torch

    q, r = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def permutation_error(module, batch: dict, seed: int = 0) -> float:
    import torch

    n = _nodes(batch, "permutation")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n)
    moved = {k: inverse[v] if k == "edge_index" else v[perm] if v.dim() and v.shape[0] == n else v for k, v in batch.items()}
    with torch.no_grad():
        want, got = outputs(run(module, batch)), outputs(run(module, moved))
    return max(_error(g, w[perm] if w.dim() and w.shape[0] == n else w) for g, w in zip(got, want))


def _with_forces(module, batch: dict) -> tuple[list, Any]:
    import torch

    pos = batch["pos"].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        outs = outputs(run(module, {**batch, "pos": pos}))
        scalar = [o for o in outs if not (o.dim() and o.shape[-1] == 3)]
        forces = None
        if scalar:
            total = sum(o.sum() for o in scalar)
            if total.requires_grad:
                (grad,) = torch.autograd.grad(total, pos, allow_unused=True)
                forces = None if grad is None else -grad
    return [o.detach() for o in outs], forces


def rotation_error(module, batch: dict, seed: int = 0) -> dict[str, float | None]:
    """{"outputs": error, "forces": error or None when no scalar output depends on pos}."""
    _nodes(batch, "rotation")
    rot = rotation_matrix(seed)
    want, forces = _with_forces(module, batch)
    got, forces_rot = _with_forces(module, {**batch, "pos": batch["pos"] @ rot.T})
    out = max(_error(g, w @ rot.T if w.dim() and w.shape[-1] == 3 else w) for g, w in zip(got, want))
    force = None if forces is None or forces_rot is None else _error(forces_rot, forces @ rot.T)
    return {"outputs": out, "forces": force}


def check_kinds(kinds: list[str]) -> None:
    for kind in kinds:
        if kind not in KINDS:
            raise ArchsmithError("invariance", f"must be one of {', '.join(KINDS)}; got {kind!r}")


def measure(module, batches: list, kinds: list[str]) -> dict[str, Any]:
    """{kind: worst error over `batches`} (rotation: {"outputs", "forces"}) on a float64 copy of `module`."""
    check_kinds(kinds)
    if not kinds:
        return {}
    model = copy.deepcopy(module).double().eval()
    found: dict[str, Any] = {}
    for i, batch in enumerate(batches):
        batch = _double(batch)
        if "permutation" in kinds:
            found["permutation"] = max(found.get("permutation", 0.0), permutation_error(model, batch, seed=i))
        if "rotation" in kinds:
            err = rotation_error(model, batch, seed=i)
            old = found.get("rotation", {"outputs": 0.0, "forces": None})
            forces = None if err["forces"] is None else max(old["forces"] or 0.0, err["forces"])
            found["rotation"] = {"outputs": max(old["outputs"], err["outputs"]), "forces": forces}
    return found


def worst(errors: dict[str, Any], kind: str) -> float:
    value = errors[kind]
    return max(v for v in value.values() if v is not None) if isinstance(value, dict) else value


def broken(teacher: dict[str, Any], student: dict[str, Any]) -> list[str]:
    """The symmetries the teacher has (within SYMMETRY_TOL) that the student breaks."""
    return [k for k in teacher if worst(teacher, k) <= SYMMETRY_TOL < worst(student, k)]
