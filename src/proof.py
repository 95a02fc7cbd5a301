"""Proof that a network is sound, for any `nn.Module`: checked by running it, reported as findings.

MODEL is what `analyze` takes (`file.py:factory`, an HF model directory, an archsmith spec or design directory);
`inputs` (`file.py:fn`) replaces the example batch. Checks, each on a fixed seed:

- forward at 1, 2 and 3 copies of the batch (graphs: disjoint unions, `edge_index` offset), outputs scaling along;
- parameters, exact, by top-level component;
- gradients of the mean squared output (train mode): parameters that get none (`no_gradient`), the RMS gradient
  of each parameterised module in run order, and the earliest quarter's against the latest's (`vanishing_gradients`
  below VANISHING);
- activations at initialisation: RMS output of each leaf module in run order against the input's
  (`exploding_activations` above EXPLODING, or not finite);
- bf16 against fp32 outputs, relative L2 (`bf16_drift` above BF16_DRIFT);
- two builds under the same seed, tensor by tensor (`nondeterministic_init`);
- `torch._dynamo.explain` (data-dependent output shapes captured): graph breaks with dynamo's own reasons
  (`graph_break`);
- `torch.export.export` (non-strict) (`not_exportable`, with the exporter's first line);
- declared symmetries, as compress measures them (`breaks_invariance`).

A healthy model has no findings. Each finding is `{code, module, detail}`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

from archsmith.errors import ArchsmithError

CODES = ("no_gradient", "vanishing_gradients", "exploding_activations", "bf16_drift", "nondeterministic_init",
         "graph_break", "not_exportable", "breaks_invariance")
COPIES = (1, 2, 3)  # batch sizes checked, as copies of the example batch
VANISHING = 1e-4  # earliest quarter's median RMS gradient over the latest quarter's
EXPLODING = 1e3  # a module's RMS output over the input's
BF16_DRIFT = 0.1  # relative L2 distance of bf16 outputs from fp32
SEED = 0


def with_options(module, options: dict):
    """`module` called with fixed non-tensor keyword arguments (a text model's use_cache=False) besides the batch."""
    import torch

    class WithOptions(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = module

        def forward(self, *args, **kwargs):
            return self.model(*args, **kwargs, **options)

    return WithOptions()


def finding(code: str, module: str, detail: str) -> dict[str, str]:
    return {"code": code, "module": module or "(root)", "detail": detail}


def grown(batch: dict | tuple, copies: int) -> dict | tuple:
    """`copies` copies of the batch along dimension 0; a graph (edge_index) becomes a disjoint union."""
    import torch

    if copies == 1:
        return batch
    named = batch if isinstance(batch, dict) else dict(enumerate(batch))
    nodes = next((named[k].shape[0] for k in ("x", "pos") if k in named), None)
    out = {}
    for key, t in named.items():
        if key == "edge_index" and nodes is not None:
            out[key] = torch.cat([t + i * nodes for i in range(copies)], dim=1)
        elif key == "batch" and nodes is not None:
            out[key] = torch.cat([t + i * (int(t.max()) + 1) for i in range(copies)])
        elif t.dim():
            out[key] = torch.cat([t] * copies)
        else:
            out[key] = t
    return out if isinstance(batch, dict) else tuple(out[i] for i in range(len(batch)))


def _seeded(fn: Callable[[], Any]) -> Any:
    import torch

    torch.manual_seed(SEED)
    return fn()


def _rms(t) -> float:
    return float(t.detach().float().pow(2).mean().sqrt()) if t.numel() else 0.0


def _input_rms(batch) -> float:
    from archsmith.compress.modules import outputs

    floats = outputs(list(batch.values()) if isinstance(batch, dict) else list(batch))
    return max((_rms(t) for t in floats), default=1.0) or 1.0


def leaf(m) -> bool:
    return not list(m.children())


def run_order(module, batch) -> tuple[Any, list[tuple[str, list]]]:
    """One seeded forward: (its output, (name, float outputs) of every leaf module in the order it ran)."""
    from archsmith.compress.modules import forward_calls

    names = {m: n for n, m in module.named_modules()}
    out, calls = _seeded(lambda: forward_calls(module, batch, leaf))
    return out, [(names[m], outs) for m, outs in calls]


def check_batches(module, batch) -> list[dict[str, Any]]:
    import torch

    from archsmith.compress.modules import outputs, run

    rows = []
    for copies in COPIES:
        try:
            with torch.no_grad():
                shapes = [list(o.shape) for o in outputs(_seeded(lambda: run(module, grown(batch, copies))))]
            rows.append({"copies": copies, "ok": True, "output_shapes": shapes})
        except Exception as exc:
            rows.append({"copies": copies, "ok": False, "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
    return rows


def check_gradients(module, batch) -> tuple[dict[str, Any], list[dict]]:
    from archsmith.compress.modules import outputs

    module.train()
    module.zero_grad(set_to_none=True)
    out, calls = run_order(module, batch)
    loss = sum(o.float().pow(2).mean() for o in outputs(out))
    loss.backward()
    found, missing = [], {}
    for name, p in module.named_parameters():
        if p.requires_grad and (p.grad is None or not bool(p.grad.abs().max() > 0)):
            owner = name.rpartition(".")[0]
            missing.setdefault(owner, []).append(name.rpartition(".")[2])
    for owner, names in missing.items():
        found.append(finding("no_gradient", owner, f"{', '.join(names)} get no gradient from the output"))
    order = [name for name, _ in calls]
    modules = dict(module.named_modules())
    profile = []
    for name in dict.fromkeys(order):
        grads = [p.grad for p in modules[name].parameters(recurse=False) if p.grad is not None]
        if grads:
            n = sum(g.numel() for g in grads)
            profile.append({"module": name, "grad_rms": math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads) / n)})
    ratio = None
    if len(profile) >= 4:
        quarter = max(1, len(profile) // 4)
        early = sorted(r["grad_rms"] for r in profile[:quarter])[quarter // 2]
        late = sorted(r["grad_rms"] for r in profile[-quarter:])[quarter // 2]
        ratio = early / late if late > 0 else math.inf
        if ratio < VANISHING:
            found.append(finding("vanishing_gradients", profile[0]["module"],
                                 f"RMS gradient of the earliest layers is {ratio:.1e} of the latest's (bar {VANISHING:.0e})"))
    module.zero_grad(set_to_none=True)
    module.eval()
    return {"loss": float(loss.detach()), "early_over_late": ratio, "by_depth": profile}, found


def check_activations(module, batch) -> tuple[list[dict], list[dict]]:
    import torch

    base = _input_rms(batch)
    with torch.no_grad():
        _, seen = run_order(module, batch)
    profile, found = [], []
    for name, outs in seen:
        if not outs:
            continue
        rms = max(_rms(o) for o in outs)
        finite = all(bool(torch.isfinite(o).all()) for o in outs)
        profile.append({"module": name, "rms": rms, "finite": finite})
        if not found and (not finite or rms > EXPLODING * base):
            found.append(finding("exploding_activations", name, "output is not finite" if not finite else
                                 f"output RMS {rms:.3g} is {rms / base:.0f}x the input's (bar {EXPLODING:.0e}x)"))
    return profile, found


def check_bf16(module, batch) -> tuple[dict[str, Any], list[dict]]:
    import torch

    from archsmith.compress.modules import outputs, run

    low = copy.deepcopy(module).to(torch.bfloat16)
    cast = (lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t)
    low_batch = {k: cast(v) for k, v in batch.items()} if isinstance(batch, dict) else tuple(cast(v) for v in batch)
    with torch.no_grad():
        want = outputs(_seeded(lambda: run(module, batch)))
        try:
            got = outputs(_seeded(lambda: run(low, low_batch)))
        except Exception as exc:
            return {"drift": None}, [finding("bf16_drift", "", f"fails in bf16: {type(exc).__name__}: {str(exc)[:120]}")]
    num = sum(float((g.float() - w).pow(2).sum()) for g, w in zip(got, want))
    drift = math.sqrt(num / max(sum(float(w.pow(2).sum()) for w in want), 1e-30))
    found = [] if drift <= BF16_DRIFT else [finding("bf16_drift", "", f"bf16 outputs are {drift:.3g} away from fp32 (relative L2, bar {BF16_DRIFT})")]
    return {"drift": round(drift, 6)}, found


def check_init(rebuild: Callable[[], Any] | None) -> tuple[dict[str, Any], list[dict]]:
    import torch

    if rebuild is None:
        return {"checked": False}, []
    first, second = _seeded(rebuild).state_dict(), _seeded(rebuild).state_dict()
    differ = [k for k in first if k in second and not torch.equal(first[k], second[k])]
    found = [finding("nondeterministic_init", differ[0].rpartition(".")[0],
                     f"{len(differ)} tensors differ between two builds under seed {SEED}: {', '.join(differ[:3])}")] if differ else []
    return {"checked": True, "tensors": len(first), "differ": len(differ)}, found


def _frame(reason) -> str:
    stack = getattr(reason, "user_stack", None) or []
    return f"{Path(stack[-1].filename).name}:{stack[-1].lineno}" if stack else ""


def check_compile(module, batch) -> tuple[dict[str, Any], list[dict]]:
    import torch

    from archsmith.analyze import silent_stderr

    torch._dynamo.reset()
    args, kwargs = ((), batch) if isinstance(batch, dict) else (batch, {})
    try:  # ops with data-dependent output shapes (nonzero, as graph libraries use) captured, as compile(dynamic) does
        with silent_stderr(), torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            explained = torch._dynamo.explain(module)(*args, **kwargs)
    except Exception as exc:
        return {"graph_breaks": None}, [finding("graph_break", "", f"dynamo cannot trace it: {type(exc).__name__}: {str(exc)[:120]}")]
    finally:
        torch._dynamo.reset()
    reasons = [" ".join(str(r.reason).split())[:200] for r in explained.break_reasons]
    where = [_frame(r) for r in explained.break_reasons]
    found = [finding("graph_break", w, r) for w, r in zip(where, reasons)]
    return {"graph_breaks": explained.graph_break_count, "graphs": explained.graph_count, "reasons": reasons}, found


def check_export(module, batch) -> tuple[dict[str, Any], list[dict]]:
    import torch

    from archsmith.export import quiet

    args, kwargs = ((), batch) if isinstance(batch, dict) else (batch, {})
    try:
        with quiet():
            torch.export.export(module, args, kwargs, strict=False)
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {"exportable": False}, [finding("not_exportable", "", f"torch.export: {type(exc).__name__}: {line[:200]}")]
    return {"exportable": True}, []


def check_symmetry(module, batch, kinds: list[str]) -> tuple[dict[str, Any], list[dict]]:
    from archsmith.compress import symmetry

    errors = symmetry.measure(module, [batch], kinds)
    found = [finding("breaks_invariance", "", f"{kind} error {symmetry.worst(errors, kind):.2e} (bar {symmetry.SYMMETRY_TOL:.0e})")
             for kind in errors if symmetry.worst(errors, kind) > symmetry.SYMMETRY_TOL]
    return errors, found


def prove(model: str, inputs: str | None = None, invariance: list[str] | None = None, allow_code: bool = True,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every check on MODEL (see the module docstring); the report with its `findings`."""
    import torch

    from archsmith.analyze import load
    from archsmith.compress import modules as mod
    from archsmith.compress import symmetry

    say = progress or (lambda message: None)
    kinds = list(invariance or [])
    symmetry.check_kinds(kinds)
    say("building the model")
    target = _seeded(lambda: load(model, allow_code=allow_code, weights=False))
    if target.meta:
        raise ArchsmithError("model", "is too large to run here (it would be analysed on the meta device); prove a smaller configuration")
    module = target.module.float().eval()
    options = {k: v for k, v in target.kwargs.items() if not isinstance(v, torch.Tensor)}  # use_cache=False, ...
    if options:
        module = with_options(module, options)
    if inputs is not None:
        batch = mod.check_batch(mod.call(mod.import_callable(inputs, "inputs", allow_code), "inputs"), "inputs")
    else:
        batch = {k: v for k, v in target.kwargs.items() if k not in options} if target.kwargs else tuple(target.args)
        if not batch:
            raise ArchsmithError("inputs", f"{model} gave no example inputs: give --inputs file.py:fn returning one batch")
    try:
        with torch.no_grad():
            first = mod.outputs(_seeded(lambda: mod.run(module, batch)))
    except Exception as exc:
        raise ArchsmithError("inputs", f"the forward pass on the example batch failed: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not first:
        raise ArchsmithError("model", "returns no floating-point tensor: there is nothing to differentiate or compare")
    report: dict[str, Any] = {"model": model, "inputs": {str(k): list(v.shape) for k, v in
                                                        (batch.items() if isinstance(batch, dict) else enumerate(batch))}}
    findings: list[dict] = []
    say("forward at several batch sizes")
    report["batches"] = check_batches(module, batch)
    report["parameters"] = {"total": mod.param_count(module),
                            "by_component": {n: mod.param_count(c) for n, c in module.named_children()}}
    steps = [("gradients", lambda: check_gradients(module, batch)),
             ("activations", lambda: check_activations(module, batch)),
             ("bf16", lambda: check_bf16(module, batch)),
             ("init", lambda: check_init(lambda: load(model, allow_code=allow_code, weights=False).module)),
             ("compile", lambda: check_compile(module, batch)),
             ("export", lambda: check_export(module, batch)),
             ("symmetry", lambda: check_symmetry(module, batch, kinds))]
    for name, check in steps:
        say(f"checking {name}")
        try:
            report[name], found = check()
        except ArchsmithError:
            raise
        except Exception as exc:  # the model, not archsmith: say which check it broke
            raise ArchsmithError("model", f"the {name} check could not run it: {type(exc).__name__}: {str(exc)[:200]}") from None
        findings += found
    report["findings"] = findings
    return report


def chart(report: dict[str, Any]) -> Callable[[Path], None]:
    """Activation RMS and gradient RMS by depth (module run order), log scale."""
    def write(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.6))
        acts = report["activations"]
        ax.plot(range(len(acts)), [max(a["rms"], 1e-30) for a in acts], label="activation RMS (init)")
        grads = report["gradients"]["by_depth"]
        ax.plot(range(len(grads)), [max(g["grad_rms"], 1e-30) for g in grads], label="gradient RMS (parameterised modules)")
        ax.set_yscale("log")
        ax.set_xlabel("depth (modules in the order the forward runs them)")
        ax.legend(fontsize=8)
        ax.set_title(f"{Path(str(report['model'])).name}: {len(report['findings'])} findings", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
        plt.close(fig)

    return write
