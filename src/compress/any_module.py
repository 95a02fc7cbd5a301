"""`compress` for any `nn.Module`: plan the student (modules.py), check its symmetries (symmetry.py), measure it
against the teacher and write the student directory (student.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

from archsmith.compress import modules as mod
from archsmith.compress import rewrites, symmetry
from archsmith.compress.student import save_inputs, structure_record, student_code, tensors_writer
from archsmith.errors import ArchsmithError

STRATEGIES = ("depth", "width", "both")
LMAX = "lmax"  # the size knob v2 lowers on the knobs route: the largest spherical-harmonic order
LATENCY_REPEATS = 10


def fidelity(teacher, student, batches: list) -> dict[str, float]:
    """On held-out batches: relative squared error of the outputs (sum over batches of ||s - t||^2 over the sum of
    ||t||^2), of the forces -d output / d pos for batches with positions, and top-1 agreement for 2-D outputs."""
    import torch

    num, den, agree, total, force_num, force_den = 0.0, 0.0, 0, 0, 0.0, 0.0
    for batch in batches:
        with torch.no_grad():
            t, s = mod.outputs(mod.run(teacher, batch)), mod.outputs(mod.run(student, batch))
        num += sum(float((b - a).pow(2).sum()) for a, b in zip(t, s))
        den += sum(float(a.pow(2).sum()) for a in t)
        if mod.has_forces(batch, t):
            (_, t_forces), (_, s_forces) = (mod.outputs_and_forces(m, batch, create_graph=False) for m in (teacher, student))
            force_num += float((s_forces - t_forces).pow(2).sum())
            force_den += float(t_forces.pow(2).sum())
        if t[0].dim() == 2 and t[0].shape[1] > 1:
            agree += int((t[0].argmax(-1) == s[0].argmax(-1)).sum())
            total += t[0].shape[0]
    found = {"relative_error": round(num / max(den, 1e-30), 6), "batches": len(batches)}
    if force_den:
        found["forces_relative_error"] = round(force_num / force_den, 6)
    if total:
        found["top1_agreement"] = round(agree / total, 4)
    return found


def measure(module, example, name: str, repeats: int) -> dict[str, Any]:
    """Parameters, FLOPs, saved activations and a depth-1 layer table (archsmith.analyze), CPU latency (median)."""
    import torch

    from archsmith.analyze import Target, analyze, median_ms, silent_stderr

    args, kwargs = ((), example) if isinstance(example, dict) else (example, {})
    with silent_stderr():
        found = analyze(Target(module, args, kwargs, name, "factory"), repeats=1)
    with torch.no_grad():
        latency = median_ms(lambda: mod.run(module, example), repeats=repeats)
    layers = [{k: r[k] for k in ("name", "type", "params", "flops", "activation_bytes")}
              for r in found["layers"] if r["depth"] == 1]
    return {**{k: found["totals"][k] for k in ("params", "forward_flops", "activation_bytes")},
            "latency_ms": round(latency, 3), "layers": layers}


def comparison(teacher, student, example, repeats: int) -> dict[str, Any]:
    t, s = measure(teacher, example, "teacher", repeats), measure(student, example, "student", repeats)
    ratios = {k: round(s[k] / t[k], 4) if t[k] else None for k in ("params", "forward_flops", "activation_bytes", "latency_ms")}
    return {"teacher": t, "student": s, "ratios": ratios, "speedup": round(t["latency_ms"] / s["latency_ms"], 3),
            "device": "cpu", "threads": __import__("torch").get_num_threads()}


def chart(report: dict[str, Any]) -> Callable[[Path], None]:
    """comparison.png: student / teacher for parameters, FLOPs, saved activations and latency."""
    def write(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ratios = report["comparison"]["ratios"]
        keys = [k for k in ("params", "forward_flops", "activation_bytes", "latency_ms") if ratios[k] is not None]
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        bars = ax.bar([k.replace("_", " ") for k in keys], [ratios[k] for k in keys], color="#4c72b0")
        ax.bar_label(bars, fmt="%.2f")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_ylabel("student / teacher")
        ax.set_title(f"{Path(report['teacher']).name}: {report['achieved_reduction']:.1%} fewer parameters, "
                     f"{report['comparison']['speedup']:.2f}x on CPU", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
        plt.close(fig)

    return write


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def markdown(report: dict[str, Any]) -> str:
    """student_report.md: the layer table, totals, fidelity, symmetries and the decisions."""
    cmp = report["comparison"]
    t, s = cmp["teacher"], cmp["student"]
    lines = [f"# Student of {report['teacher']}", "",
             f"{report['version']}, route `{report['route']}`, strategy `{report['strategy']}`: "
             f"{report['teacher_params']:,} -> {report['student_params']:,} parameters "
             f"({report['achieved_reduction']:.1%} fewer; asked {report['target_reduction']:.0%}).", "",
             "| | teacher | student | student / teacher |", "|---|---:|---:|---:|"]
    for key, label in (("params", "parameters"), ("forward_flops", "forward FLOPs"),
                       ("activation_bytes", "saved activations (bytes)"), ("latency_ms", "CPU latency (ms, median)")):
        ratio = cmp["ratios"][key]
        lines.append(f"| {label} | {_si(t[key])} | {_si(s[key])} | {'-' if ratio is None else f'{ratio:.3f}'} |")
    lines += ["", f"Speed-up on CPU ({cmp['threads']} threads, example batch): **{cmp['speedup']:.2f}x**.", "",
              "## Layers", "", "| module | teacher type | teacher params | student params | teacher FLOPs | student FLOPs |",
              "|---|---|---:|---:|---:|---:|"]
    student_rows = {r["name"]: r for r in s["layers"]}
    for row in t["layers"]:
        other = student_rows.get(row["name"])
        params, flops = ("-", "-") if other is None else (f"{other['params']:,}", _si(other["flops"]))
        lines.append(f"| `{row['name']}` | {row['type']} | {row['params']:,} | {params} | {_si(row['flops'])} | {flops} |")
    fid = report["fidelity"]
    lines += ["", "## Fidelity (held-out batches)", ""]
    for when, values in fid.items():
        lines.append(f"- {when.replace('_', ' ')}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in values.items()))
    if report["symmetry"]["teacher"]:
        lines += ["", "## Symmetries (relative error, float64)", "", "| symmetry | teacher | student |", "|---|---:|---:|"]
        for kind, value in report["symmetry"]["teacher"].items():
            student_value = report["symmetry"]["student"][kind]
            if isinstance(value, dict):
                for part in value:
                    lines.append(f"| {kind} ({part}) | {value[part]} | {student_value[part]} |")
            else:
                lines.append(f"| {kind} | {value} | {student_value} |")
    lines += ["", "## Decisions", ""] + [f"- {d}" for d in report["decisions"]]
    return "\n".join(lines) + "\n"


def compress_module(model: str, reduction: float, out: str | Path, strategy: str = "both", v2: bool = False,
                    inputs: str | None = None, data: str | None = None, invariance: list[str] | None = None,
                    route: str = "auto", allow_code: bool = True, repeats: int = LATENCY_REPEATS, overwrite: bool = False,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A student of any nn.Module (see modules.py for the two routes); returns the report (compression.json)."""
    import torch

    from archsmith.files import check_out_dir, write_files

    say = progress or (lambda message: None)
    if not isinstance(reduction, (int, float)) or not 0 < reduction < 1:
        raise ArchsmithError("reduction", f"must be a fraction in (0, 1), got {reduction!r}")
    if strategy not in STRATEGIES:
        raise ArchsmithError("strategy", f"must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if route not in mod.ROUTES:
        raise ArchsmithError("route", f"must be one of {', '.join(mod.ROUTES)}; got {route!r}")
    kinds = list(invariance or [])
    symmetry.check_kinds(kinds)  # before any work
    check_out_dir(out, overwrite)
    source = mod.load_source(model, allow_code)
    say("loading the teacher")
    teacher, example = source.build(weights=True)
    if inputs is not None:
        example = mod.check_batch(mod.call(mod.import_callable(inputs, "inputs", allow_code), "inputs"), "inputs")
    if example is None and data is None:
        raise ArchsmithError("inputs", f"no example inputs for {model}: give --inputs file.py:fn returning one batch")
    batches = mod.batches_from(data, example, allow_code)
    if example is None:
        example = batches[0]  # the data's first batch stands for the example
    calibration, held = mod.split(batches)
    try:
        with torch.no_grad():
            mod.run(teacher, example)
    except Exception as exc:
        raise ArchsmithError("inputs", f"the teacher's forward on the example batch failed: {type(exc).__name__}: {str(exc)[:200]}") from None
    teacher_params = mod.param_count(teacher)
    target = round((1 - reduction) * teacher_params)
    decisions: list[str] = []
    chosen = "knobs" if route == "knobs" or (route == "auto" and source.kind == "factory" and source.knobs) else "prune"
    if chosen == "knobs" and not source.knobs:
        raise ArchsmithError("route", "knobs needs a factory with integer keyword arguments (its size knobs)")
    knobs, removed, attributes, applied = None, [], {}, []
    if chosen == "knobs":
        searched = source
        if v2:
            if source.knobs.get(LMAX, 0) < 2:
                raise ArchsmithError("v2", f"on the knobs route v2 lowers the spherical-harmonic order: the factory needs an "
                                           f"integer {LMAX!r} knob of at least 2 (its knobs: {source.knobs})")
            searched = mod.Source(source.kind, source.ref, {**source.knobs, LMAX: source.knobs[LMAX] - 1}, source.factory)
            decisions.append(f"v2: {LMAX} {source.knobs[LMAX]} -> {searched.knobs[LMAX]}: fewer spherical-harmonic orders "
                             "in features and edge filters, so fewer tensor-product paths")
        knobs, _ = mod.search_knobs(searched, reduction, strategy, teacher_params, say)
        student, _ = source.build(knobs)
        done, total = mod.slice_init(student, teacher.state_dict())
        decisions.append(f"size knobs {source.knobs} -> {knobs}: the same architecture, smaller; {done} of {total} "
                         "tensors initialised from the teacher's leading slices")
    else:
        student = copy.deepcopy(teacher)
        if v2:
            say("v2: rewriting operations")
            applied = rewrites.apply(student, example, keep_above=target)
            decisions += [f"v2 {r['name']}: {len(r['sites'])} sites (largest first, none past the target), CPU latency "
                          f"x{r['latency_ratio']}; {r['rationale']}" for r in applied]
        if strategy != "width":
            say("measuring which repeated blocks matter least")
            scores = mod.block_importance(student, mod.repeated_blocks(student), calibration)
            share = 1.0 if strategy == "depth" else mod.DEPTH_SHARE
            removed = mod.choose_blocks(student, scores, round(share * (mod.param_count(student) - target)))
            mod.drop_blocks(student, removed)
            decisions.append(f"depth: dropped {len(removed)} of {len(scores)} droppable blocks, least output change first: "
                             + (", ".join(f"{c}[{i}]" for c, i in removed) or "none"))
        skeleton = mod.simple_attributes(student)
        if strategy != "depth":
            say("bisecting the pruning ratio for the exact target")
            ratio, _ = mod.width_ratio(student, example, target)
            say(f"pruning channels, hidden units and heads (base ratio {ratio:.3f}, Taylor importance)")
            mod.prune_width(student, example, ratio, calibration)
            decisions.append(f"width: torch-pruning, base ratio {ratio:.3f} scaled x{mod.EARLY} (first layers) to "
                             f"x{mod.LATE} (last), Taylor importance on {len(calibration)} calibration batches; the output "
                             "layer keeps its width")
        attributes = mod.changed_attributes(skeleton, mod.simple_attributes(student))
    student.eval()
    student_params = mod.param_count(student)
    achieved = 1 - student_params / teacher_params
    if abs(achieved - reduction) > mod.TOLERANCE:
        raise ArchsmithError("reduction", f"{reduction:.0%} is not reachable with strategy {strategy!r} on route {chosen}: "
                                          f"the nearest feasible is {achieved:.1%}")
    say("checking symmetries" if kinds else "measuring fidelity")
    sym_teacher = symmetry.measure(teacher, held[:4], kinds)
    sym_student = symmetry.measure(student, held[:4], kinds)
    broken = symmetry.broken(sym_teacher, sym_student)
    if broken:
        raise ArchsmithError("invariance", "the student breaks " + ", ".join(
            f"{k} symmetry (teacher error {symmetry.worst(sym_teacher, k):.1e}, student {symmetry.worst(sym_student, k):.1e})"
            for k in broken) + f" that the teacher keeps within {symmetry.SYMMETRY_TOL:.0e}; nothing was written")
    for kind in kinds:
        if symmetry.worst(sym_teacher, kind) > symmetry.SYMMETRY_TOL:
            decisions.append(f"the teacher itself is not {kind}-symmetric (error {symmetry.worst(sym_teacher, kind):.1e})")
    fid = {"teacher_vs_student": fidelity(teacher, student, held)}
    say("measuring teacher and student (FLOPs, activations, CPU latency)")
    cmp = comparison(teacher, student, example, repeats)
    version = "v2" if v2 else "v1"
    record = structure_record(source, chosen, knobs, removed, attributes, example, version, [{"name": r["name"], "sites": r["sites"]} for r in applied])
    report = {"teacher": str(model), "kind": source.kind, "version": version, "route": chosen, "strategy": strategy,
              "target_reduction": reduction, "achieved_reduction": round(achieved, 4), "teacher_params": teacher_params,
              "student_params": student_params, "knobs": knobs, "removed_blocks": [list(b) for b in removed],
              "symmetry": {"teacher": sym_teacher, "student": sym_student}, "fidelity": fid, "comparison": cmp,
              "decisions": decisions, "rewrites": applied, "int8_audit": rewrites.int8_audit(student) if v2 else None,
              "calibration_batches": len(calibration), "heldout_batches": len(held),
              "loads_with": "archsmith.compress.load_student"}
    summary = f"{report['achieved_reduction']:.1%} fewer parameters than {Path(str(model)).name} ({chosen} route)"
    files = {"model.safetensors": tensors_writer(student.state_dict()), "student.json": json.dumps(record, indent=2) + "\n",
             "inputs.safetensors": save_inputs(example), f"student_{version}.py": student_code(record, summary),
             "student_report.md": markdown(report), "compression.json": json.dumps(report, indent=2) + "\n",
             "comparison.png": chart(report)}
    say("writing the student")
    report["files"] = [str(p) for p in write_files(out, files, overwrite)]
    return report
