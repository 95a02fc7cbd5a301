"""Distillation for any teacher / student pair of `nn.Module`s, on the loop of `archsmith train`.

    report = distill_module("model.py:factory", "runs/student", "data.py:batches", "runs/distilled", steps=200)

The student is a `compress` output directory (student.json); the teacher is what compress was given
(`file.py:factory` returning the trained teacher, or a model directory). Batches come from `--data file.py:fn`;
the last quarter is held out for the fidelity report, as in compress. The objective, per batch:

- outputs: relative squared error ||s - t||^2 / ||t||^2 (regression: energies, embeddings), or for classifier
  logits `T^2 x KL(softmax(t / T) || softmax(s / T))`; `loss="auto"` takes KL for a transformers model's 2-D logits
  and the relative error otherwise; batches with positions `pos` (N, 3) and scalar outputs also match the forces
  -d(output)/d pos by relative squared error (an interatomic potential learns its forces, not only energies);
- features: `feature_weight x` the mean relative squared error between the outputs of the blocks both models keep
  (same names; a depth-pruned student's blocks mapped to the teacher blocks they came from), the student's mapped to
  the teacher's width by a learned linear projection (started at the ridge least-squares fit on the first batch) where
  widths differ.

OUT/final is a student directory again (load_student reads it); checkpoints resume with `resume=True`.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable

from archsmith.compress import modules as mod
from archsmith.compress.any_module import fidelity
from archsmith.errors import ArchsmithError

LOSSES = ("auto", "mse", "kl")
RIDGE = 1e-2  # the projection fit's ridge, relative to the mean feature power
STUDENT_FILES = ("student.json", "inputs.safetensors", "student_v1.py", "student_v2.py", "student_report.md")


def block_map(record: dict, student) -> dict[str, str]:
    """{student block name: teacher block name} for the blocks of repeated-block containers: a block the student
    kept maps to the teacher index it came from (dropped blocks shift the later ones)."""
    removed: dict[str, list[int]] = {}
    for container, index in record.get("removed", []):
        removed.setdefault(container, []).append(index)
    mapping = {}
    blocks = mod.repeated_blocks(student)  # the first of each kind is not listed there, but it is a block too
    for container, index in blocks + [(c, 0) for c in dict.fromkeys(c for c, _ in blocks)]:
        teacher_index = index
        for gone in sorted(removed.get(container, [])):
            if gone <= teacher_index:
                teacher_index += 1
        mapping[f"{container}.{index}"] = f"{container}.{teacher_index}"
    return mapping


class Features:
    """Forward hooks keeping the output (first float tensor) of named modules in the last forward."""

    def __init__(self, model, names: list[str]):
        self.outputs: dict[str, Any] = {}
        modules = dict(model.named_modules())
        for name in names:
            modules[name].register_forward_hook(partial(self._keep, name))

    def _keep(self, name: str, module, args, output) -> None:
        found = mod.outputs(output)
        self.outputs[name] = found[0] if found else None


def channels_last(x):
    """(..., C) view of a feature map: images (B, C, H, W) move C last; other tensors already have it last."""
    return x.movedim(1, -1) if x.dim() == 4 else x


def relative_sq(student, teacher):
    return (student - teacher).pow(2).sum() / teacher.pow(2).sum().clamp_min(1e-12)


class Objective:
    """Trainer objective(modules, batch) -> (loss, metrics); see the module docstring."""

    def __init__(self, teacher, pairs: dict[str, str], s_hooks: Features, t_hooks: Features, loss: str,
                 temperature: float, feature_weight: float, forces: bool):
        self.teacher, self.pairs, self.s_hooks, self.t_hooks = teacher, pairs, s_hooks, t_hooks
        self.loss, self.temperature, self.feature_weight, self.forces = loss, temperature, feature_weight, forces

    def __call__(self, modules, batch: dict):
        import torch
        import torch.nn.functional as F

        inputs = unpack(batch)
        metrics: dict[str, Any] = {}
        if self.forces:  # energies and their forces -dE/dpos: the student's forces need a graph for backward
            t_out, t_forces = mod.outputs_and_forces(self.teacher, inputs, create_graph=False)
            s_out, s_forces = mod.outputs_and_forces(modules.model, inputs, create_graph=True)
            force_loss = relative_sq(s_forces, t_forces.detach())
            metrics["force_rel_sq"] = force_loss.detach()
        else:
            with torch.no_grad():
                t_out = mod.outputs(mod.run(self.teacher, inputs))
            s_out = mod.outputs(mod.run(modules.model, inputs))
        if self.loss == "kl":
            T = self.temperature
            out_loss = F.kl_div((s_out[0] / T).log_softmax(-1), (t_out[0] / T).log_softmax(-1), log_target=True,
                                reduction="batchmean") * T * T
            metrics["kl_t2"] = out_loss.detach()
        else:
            out_loss = sum(relative_sq(s, t) for s, t in zip(s_out, t_out)) / len(t_out)
            metrics["output_rel_sq"] = out_loss.detach()
        loss = out_loss + force_loss if self.forces else out_loss
        if self.feature_weight > 0 and self.pairs:
            projections = getattr(modules, "proj", None)
            terms = []
            for i, (s_name, t_name) in enumerate(self.pairs.items()):
                s, t = self.s_hooks.outputs.get(s_name), self.t_hooks.outputs.get(t_name)
                if s is None or t is None:
                    continue
                s, t = channels_last(s), channels_last(t)
                if projections is not None and str(i) in projections:
                    s = projections[str(i)](s)
                terms.append(relative_sq(s, t))
            if terms:
                feature = sum(terms) / len(terms)
                loss = loss + self.feature_weight * feature
                metrics["feature_rel_sq"] = feature.detach()
        return loss, metrics


def pack(batch: dict | tuple) -> dict:
    """The Trainer moves dict batches: a tuple batch travels as {"__position_i": tensor}."""
    from archsmith.compress.student import TUPLE_KEY

    return dict(batch) if isinstance(batch, dict) else {TUPLE_KEY.format(i): t for i, t in enumerate(batch)}


def unpack(batch: dict) -> dict | tuple:
    from archsmith.compress.student import TUPLE_KEY

    if TUPLE_KEY.format(0) in batch:
        return tuple(batch[TUPLE_KEY.format(i)] for i in range(len(batch)))
    return batch


def fit_projections(student, teacher, pairs: dict[str, str], s_hooks: Features, t_hooks: Features, batch):
    """{index: Linear(student width -> teacher width)} at the ridge-regularised least-squares fit (features such as
    normalised ones are rank-deficient: a plain fit amplifies the first step's change), for pairs whose widths differ."""
    import torch

    with torch.no_grad():
        mod.run(student, batch)
        mod.run(teacher, batch)
        projections = {}
        for i, (s_name, t_name) in enumerate(pairs.items()):
            s, t = s_hooks.outputs.get(s_name), t_hooks.outputs.get(t_name)
            if s is None or t is None:
                continue
            s, t = channels_last(s), channels_last(t)
            if s.shape[-1] == t.shape[-1]:
                continue
            xs, ys = s.reshape(-1, s.shape[-1]).double(), t.reshape(-1, t.shape[-1]).double()
            gram = xs.T @ xs
            ridge = RIDGE * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
            proj = torch.nn.Linear(s.shape[-1], t.shape[-1], bias=False)
            proj.weight.data.copy_(torch.linalg.solve(gram + ridge, xs.T @ ys).T.float())
            projections[str(i)] = proj
    return torch.nn.ModuleDict(projections) if projections else None


def fidelity_chart(before: dict[str, Any], after: dict[str, Any]) -> bytes:
    """fidelity.png: held-out relative error (and top-1 agreement) before and after distillation."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("relative_error", "forces_relative_error", "top1_agreement") if k in before]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        bars = ax.bar(["before", "after"], [before[key], after[key]], color=["#c44e52", "#55a868"])
        ax.bar_label(bars, fmt="%.4g")
        ax.set_title(key.replace("_", " ") + (" (lower is closer)" if key.endswith("relative_error") else ""), fontsize=9)
    fig.suptitle("student vs teacher on held-out batches", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _save_student(source: Path, model, state_dict, directory: Path) -> None:
    """Save hook: model.safetensors plus the student directory's records (a directory load_student reads)."""
    from archsmith.compress.student import tensors_writer
    from archsmith.files import write_files

    files: dict[str, Any] = {"model.safetensors": tensors_writer(state_dict)}
    for name in STUDENT_FILES:
        if (source / name).is_file():
            files[name] = partial(lambda src, dst: shutil.copyfile(src, dst), source / name)
    write_files(directory, files, overwrite=True)


def _load_student(model, directory: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(directory / "model.safetensors")))


def distill_module(teacher: str, student: str | Path, data: str, out: str | Path, steps: int = 200, lr: float = 1e-3,
                   loss: str = "auto", temperature: float = 2.0, feature_weight: float = 1.0, resume: bool = False,
                   allow_code: bool = True, seed: int = 0, progress: bool = True,
                   say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Distil `teacher` into the compress student directory `student` on `data`'s batches (see the module docstring)."""
    from archsmith.compress.student import load_student
    from archsmith.files import write_file
    from archsmith.train.loop import Trainer, TrainConfig

    from archsmith.distill.text import check_settings

    say = say or (lambda message: None)
    check_settings(steps=steps, lr=lr, temperature=temperature, hidden_weight=feature_weight)
    if loss not in LOSSES:
        raise ArchsmithError("loss", f"must be one of {', '.join(LOSSES)}; got {loss!r}")
    out = Path(out)
    if not resume and out.exists():
        raise ArchsmithError("out", f"{out} exists; choose a new run directory (or resume this one)")
    student_dir = Path(student)
    if not (student_dir / "student.json").is_file():
        raise ArchsmithError("student", f"{student_dir} is not a compress output for any nn.Module (no student.json)")
    if data is None:
        raise ArchsmithError("data", "give --data file.py:fn returning the batches to distil on")
    record = json.loads((student_dir / "student.json").read_text())
    say("loading teacher and student")
    source = mod.load_source(teacher, allow_code)
    t_model, _ = source.build(weights=True)
    t_model.eval().requires_grad_(False)
    s_model = load_student(student_dir, allow_code)
    batches = mod.batches_from(data, None, allow_code)
    train, held = mod.split(batches)
    if mod.param_count(s_model) >= mod.param_count(t_model):
        raise ArchsmithError("student", "has at least as many parameters as the teacher: is it the right pair?")
    with __import__("torch").no_grad():
        t_first = mod.outputs(mod.run(t_model, train[0]))
        s_first = mod.outputs(mod.run(s_model, train[0]))
    if [t.shape for t in t_first] != [s.shape for s in s_first]:
        raise ArchsmithError("student", f"outputs {[tuple(s.shape) for s in s_first]} differ from the teacher's "
                                        f"{[tuple(t.shape) for t in t_first]} on the same batch")
    chosen = loss if loss != "auto" else "kl" if source.kind == "transformers" and t_first[0].dim() == 2 else "mse"
    t_names = dict(t_model.named_modules())
    pairs = {s: t for s, t in block_map(record, s_model).items() if t in t_names}
    s_hooks, t_hooks = Features(s_model, list(pairs)), Features(t_model, list(pairs.values()))
    say(f"fidelity before, on {len(held)} held-out batches")
    s_model.eval()
    before = fidelity(t_model, s_model, held)
    extra = {}
    projections = fit_projections(s_model, t_model, pairs, s_hooks, t_hooks, train[0]) if feature_weight > 0 else None
    if projections is not None:
        extra["proj"] = projections
    forces = chosen == "mse" and mod.has_forces(train[0], t_first)
    objective = Objective(t_model, pairs, s_hooks, t_hooks, chosen, temperature, feature_weight, forces)
    config = TrainConfig(steps=steps, global_batch=1, lr=lr, warmup=max(1, steps // 20), seed=seed, weight_decay=0.0,
                         progress=progress, unused_parameters=True)
    say(f"distilling: {steps} steps over {len(train)} batches")
    trainer = Trainer(s_model, objective, [pack(b) for b in train], lambda items: items[0], out, config, extra=extra,
                      save_model=partial(_save_student, student_dir), load_model=_load_student,
                      count_tokens=lambda b: int(next(iter(b.values())).shape[0]))
    summary = trainer.fit(resume=resume)
    s_model.eval()
    say("fidelity after")
    after = fidelity(t_model, s_model, held)
    report = {
        "teacher": str(teacher), "student": str(student), "final": str(out / "final"), "kind": source.kind,
        "settings": {"steps": steps, "lr": lr, "loss": chosen, "temperature": temperature, "feature_weight": feature_weight,
                     "seed": seed},
        "objective": ("T^2 KL of logits" if chosen == "kl" else "output relative squared error")
                     + (" + forces (-d output / d pos) relative squared error" if forces else "")
                     + (f" + {feature_weight:g} x feature relative squared error over {len(pairs)} blocks" if feature_weight > 0 and pairs else ""),
        "feature_pairs": pairs, "projection": projections is not None, "train_batches": len(train), "heldout_batches": len(held),
        "fidelity": {"before": before, "after": after},
        "training": {k: summary.get(k) for k in ("steps", "first_loss", "last_loss", "elapsed_s", "stop_reason")},
    }
    write_file(out / "fidelity.png", fidelity_chart(before, after), overwrite=True)
    write_file(out / "distillation.json", json.dumps(report, indent=2) + "\n", overwrite=True)
    report["files"] = [str(out / name) for name in ("final", "distillation.json", "fidelity.png", "loss.png", "metrics.jsonl")]
    return report
