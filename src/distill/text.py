"""Distillation: a student learns to behave like its teacher, on the loop of `archsmith train`.

    report = distill("teacher_dir", "student_dir", ["corpus.txt"], "runs/distilled", steps=200)

Teacher and student are model directories of the same kind and vocabulary: BERT-style encoders
(transformers' BertModel, e.g. all-MiniLM-L6-v2 and the students `compress` makes of it) or causal
LMs that `archsmith.network` loads with logits equal to transformers. The objective, per batch:

- LMs: `alpha x T^2 x KL(softmax(teacher / T) || softmax(student / T))` per token (Hinton et al.
  2015; T^2 keeps the gradient scale independent of T) plus `(1 - alpha) x` the next-token
  cross-entropy (the task loss: text is its own label).
- Encoders have no logits: the soft target is the teacher's in-batch cosine-similarity matrix of
  mean-pooled sentence embeddings, matched by mean squared error (what the fidelity report measures).
- Both: `hidden_weight x` the mean relative MSE between student layer i's output, mapped to the
  teacher's width by a learned linear projection when widths differ, and the output of its teacher
  layer (the layers `compress` kept, else evenly spread); the projection starts at the least-squares
  fit on the first batch. Encoders: `attention_weight x` the MSE of head-averaged attention maps.

The Trainer (archsmith.train.loop) runs it: AdamW, warmup + cosine, clipping, progress, checkpoints
in OUT/checkpoints that `resume=True` continues exactly, metrics.jsonl and loss.png; the projection
is an extra trainable module, saved with the checkpoints. OUT/final is the distilled student (config,
safetensors and tokenizer: AutoModel / AutoModelForCausalLM load it). Fidelity on held-out text
before and after goes into OUT/distillation.json and OUT/fidelity.png.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

from archsmith.compress import text as comp
from archsmith.errors import ArchsmithError

TEMPERATURE = 2.0  # DistilBERT's softening of the teacher's distribution
ALPHA = 0.5  # LMs: half soft targets, half next-token cross-entropy (DistilBERT, MiniLLM baselines)
HIDDEN_WEIGHT = 1.0  # relative MSE is scale-free, so 1 puts it on a par with the soft-target loss
LR = 5e-4  # DistilBERT's peak; small students recover in a few hundred steps (MiniLM half: Spearman 0.53 -> 0.65 in 150)
SENTENCES = comp.DATA / "sentences.txt"  # 159 varied English sentences written for archsmith: a corpus to try distill on
MAX_DOCUMENTS = 200_000  # documents (encoders: lines) read from --data: bounded memory for a CPU-sized job
LIMITS = {"steps": (1, 1_000_000), "temperature": (0.1, 100.0), "alpha": (0.0, 1.0), "hidden_weight": (0.0, 100.0),
          "attention_weight": (0.0, 100.0), "lr": (1e-7, 1.0), "batch": (1, 4096), "seq": (8, 8192)}


@dataclass
class Side:
    """One model of the pair: the model in eval mode, its config.json, directory, tokenizer and layer stack."""

    family: str
    model: Any
    config: dict
    path: Path
    tokenizer: Any | None

    @property
    def encoder(self) -> bool:
        return self.family in comp.ENCODERS

    @property
    def layers(self):
        return self.model.encoder.layer if self.encoder else self.model.model.layers

    @property
    def width(self) -> int:
        return self.config["hidden_size"]

    def as_teacher(self) -> comp.Teacher:
        """The view `compress.fidelity` reads."""
        return comp.Teacher(self.family, self.model, self.config, self.path, None, self.tokenizer)


def load_side(path: str | Path, field: str, attention: bool = False) -> Side:
    """A model directory with safetensors weights: a BERT-style encoder or a causal LM network.py matches."""
    import torch

    from archsmith.hfconfig import read_config

    path = Path(path)
    if not path.is_dir():
        raise ArchsmithError(field, f"must be a model directory with config.json and safetensors weights; got {path}")
    cfg = read_config(path)
    family = cfg.get("model_type")
    if not any(path.glob("*.safetensors")):
        raise ArchsmithError(field, f"{path} has no safetensors weights (only safetensors are read)")
    if family in comp.ENCODERS:
        from transformers import AutoModel

        from archsmith.analyze import quiet_transformers

        quiet_transformers()
        model = AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                          attn_implementation="eager" if attention else "sdpa")
    elif family in comp.DECODERS:
        from archsmith.network import CausalLM

        model = CausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        raise ArchsmithError(field, f"distill takes {', '.join(comp.ENCODERS + comp.DECODERS)} models; got model_type {family!r}")
    return Side(family, model.eval(), cfg, path, comp._tokenizer(path))


def layer_map(student: Side, teacher_layers: int) -> list[int]:
    """Teacher layer for each student layer: the ones `compress` kept (compression.json), else spread evenly."""
    n = len(student.layers)
    report = student.path / "compression.json"
    if report.is_file():
        kept = json.loads(report.read_text()).get("kept_layers")
        if isinstance(kept, list) and len(kept) == n and all(isinstance(i, int) and 0 <= i < teacher_layers for i in kept):
            return kept
    return [round((i + 1) * teacher_layers / n) - 1 for i in range(n)]


def check_settings(**values: float) -> None:
    for name, value in values.items():
        low, high = LIMITS[name]
        if not low <= value <= high:
            raise ArchsmithError(name, f"must be in [{low:g}, {high:g}], got {value!r}")


# ---- data ------------------------------------------------------------------------------------------

def read_samples(data: Sequence[str | Path], side: Side, seq: int, eos_id: int | None) -> Sequence:
    """Encoders: one tokenized line per sample (at most `seq` tokens). LMs: the documents tokenized,
    each followed by EOS, packed into windows of `seq` tokens (archsmith.train.data)."""
    import numpy as np

    from archsmith.train.data import corpus_files, documents, split_windows

    texts = []
    for doc in documents(corpus_files(data)):
        texts += [line.strip() for line in doc.splitlines() if line.strip()] if side.encoder else [doc]
        if len(texts) >= MAX_DOCUMENTS:
            break
    if not texts:
        raise ArchsmithError("data", "holds no text")
    if side.encoder:
        ids = side.tokenizer(texts[:MAX_DOCUMENTS], truncation=True, max_length=seq)["input_ids"]
        return [row for row in ids if len(row) > 2]  # more than [CLS] [SEP]
    stream = []
    for row in side.tokenizer(texts[:MAX_DOCUMENTS], add_special_tokens=False)["input_ids"]:
        stream += [*row, eos_id]
    windows, _ = split_windows(np.asarray(stream, dtype=np.int64), seq, 0.0)
    return windows


def encoder_batch(rows: list[list[int]], pad_id: int) -> dict[str, Any]:
    """Token id lists -> input_ids and attention_mask (B, longest), right-padded."""
    import torch

    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


# ---- the objective ---------------------------------------------------------------------------------

class LayerOutputs:
    """Forward hooks that keep each layer's output hidden states (B, S, hidden) of the last forward."""

    def __init__(self, layers):
        self.outputs: list[Any] = [None] * len(layers)
        for i, layer in enumerate(layers):
            layer.register_forward_hook(partial(self._keep, i))

    def _keep(self, i: int, module, args, output) -> None:
        self.outputs[i] = output[0] if isinstance(output, tuple) else output


def relative_mse(student, teacher, mask):
    """Mean squared error over the real tokens, relative to the teacher's mean square (scale-free)."""
    m = mask.unsqueeze(-1).to(student.dtype)
    return (((student - teacher) ** 2) * m).sum() / ((teacher ** 2) * m).sum().clamp_min(1e-12)


def pooled(hidden, mask):
    """Mean-pooled, L2-normalised sentence embeddings (B, hidden)."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


@dataclass
class Objective:
    """The distillation loss; called by the Trainer as objective(modules, batch) -> (loss, metrics)."""

    teacher: Side
    student_hooks: LayerOutputs
    teacher_hooks: LayerOutputs
    mapping: list[int]
    encoder: bool
    temperature: float
    alpha: float
    hidden_weight: float
    attention_weight: float

    def __call__(self, modules, batch: dict[str, Any]):
        import torch
        import torch.nn.functional as F

        teacher = self.teacher.model
        ids = batch["input_ids"]
        if next(teacher.parameters()).device != ids.device:
            teacher.to(ids.device)
        mask = batch["attention_mask"] if self.encoder else batch["labels"].ne(-100)
        want_attention = self.encoder and self.attention_weight > 0
        with torch.no_grad():
            t_out = teacher(input_ids=ids, attention_mask=batch["attention_mask"], output_attentions=True) if want_attention else \
                teacher(input_ids=ids, attention_mask=batch["attention_mask"]) if self.encoder else teacher(ids)
        t_hidden = list(self.teacher_hooks.outputs)
        metrics: dict[str, Any] = {}
        if self.encoder:
            s_out = modules.model(input_ids=ids, attention_mask=batch["attention_mask"], output_attentions=want_attention)
            s_emb, t_emb = pooled(s_out.last_hidden_state, mask), pooled(t_out.last_hidden_state, mask)
            soft = F.mse_loss(s_emb @ s_emb.T, t_emb @ t_emb.T)
            loss = soft
            metrics["similarity_mse"] = soft.detach()
        else:
            s_out = modules.model(ids, labels=batch["labels"])
            T = self.temperature
            s_logits, t_logits = s_out.logits.float() / T, t_out.logits.float() / T
            kl = F.kl_div(s_logits.log_softmax(-1), t_logits.log_softmax(-1), log_target=True, reduction="none").sum(-1)
            soft = (kl * mask).sum() / mask.sum().clamp_min(1) * T * T
            ce = s_out.loss  # the task loss: next-token cross-entropy (plus a MoE student's router loss)
            loss = self.alpha * soft + (1 - self.alpha) * ce
            metrics.update(kl_t2=soft.detach(), nll=ce.detach())
        if self.hidden_weight > 0:
            project = getattr(modules, "proj", None) or (lambda x: x)
            hidden = sum(relative_mse(project(s), t_hidden[j], mask)
                         for s, j in zip(self.student_hooks.outputs, self.mapping)) / len(self.mapping)
            loss = loss + self.hidden_weight * hidden
            metrics["hidden_rel_mse"] = hidden.detach()
        if want_attention:
            attn = sum(F.mse_loss(s_out.attentions[i].mean(1), t_out.attentions[j].mean(1))
                       for i, j in enumerate(self.mapping)) / len(self.mapping)
            loss = loss + self.attention_weight * attn
            metrics["attention_mse"] = attn.detach()
        return loss, metrics


def fit_projection(student: Side, teacher: Side, batch: dict[str, Any], mapping: list[int], s_hooks, t_hooks):
    """nn.Linear(student width -> teacher width) at the least-squares fit of the mapped layers on one batch."""
    import torch

    with torch.no_grad():
        for side in (student, teacher):
            if side.encoder:
                side.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            else:
                side.model(batch["input_ids"])
        mask = (batch["attention_mask"] if student.encoder else batch["labels"].ne(-100)).bool()
        xs = torch.cat([s[mask] for s in s_hooks.outputs])
        ys = torch.cat([t_hooks.outputs[j][mask] for j in mapping])
        weight = torch.linalg.lstsq(xs.double(), ys.double()).solution.T.float()  # (teacher width, student width)
    proj = torch.nn.Linear(student.width, teacher.width, bias=False)
    proj.weight.data.copy_(weight)
    return proj


# ---- the run ---------------------------------------------------------------------------------------

def _save_with_tokenizer(source: Path, model, state_dict, directory: Path) -> None:
    """Save hook: the model, then the tokenizer files of `source` beside it (a complete model directory)."""
    from archsmith.files import write_files
    from archsmith.train.checkpoint import save_model

    save_model(model, state_dict, directory)
    files = {name: partial(lambda src, dst: shutil.copyfile(src, dst), source / name)
             for name in comp.TOKENIZER_FILES if (source / name).is_file()}
    write_files(directory, files, overwrite=True)


def fidelity_chart(before: dict[str, Any], after: dict[str, Any], encoder: bool) -> bytes:
    """Before / after bars of the fidelity numbers (PNG)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("spearman", "pearson") if encoder else ("kl_to_teacher", "student_perplexity")
    fig, axes = plt.subplots(1, len(keys), figsize=(8, 3.2))
    for ax, key in zip(axes, keys):
        bars = ax.bar(["before", "after"], [before[key], after[key]], color=["#999999", "#2a7ab0"])
        ax.bar_label(bars, fmt="%.4g")
        ax.set_title(key.replace("_", " "))
    if not encoder:
        axes[1].axhline(after["teacher_perplexity"], color="black", linestyle="--", label="teacher")
        axes[1].legend()
    fig.suptitle("Student vs teacher on held-out text, before and after distillation")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def distill(teacher: str | Path, student: str | Path, data: Sequence[str | Path], out: str | Path, steps: int = 200,
            temperature: float = TEMPERATURE, alpha: float = ALPHA, hidden_weight: float = HIDDEN_WEIGHT,
            attention_weight: float = 0.0, lr: float = LR, batch: int = 16, seq: int = 128,
            heldout: str | Path | None = None, resume: bool = False, seed: int = 0, progress: bool = True,
            say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Distil `teacher` into `student` on `data`; returns the report (also OUT/distillation.json)."""
    from archsmith.files import write_file
    from archsmith.train.loop import Trainer, TrainConfig

    say = say or (lambda message: None)
    check_settings(steps=steps, temperature=temperature, alpha=alpha, hidden_weight=hidden_weight,
                   attention_weight=attention_weight, lr=lr, batch=batch, seq=seq)
    out = Path(out)
    if not resume and out.exists():
        raise ArchsmithError("out", f"{out} exists; choose a new run directory (or resume this one)")
    held_texts = comp.read_lines(heldout, comp.HELDOUT, "heldout")
    say("loading teacher and student")
    t = load_side(teacher, "teacher", attention=attention_weight > 0)
    s = load_side(student, "student", attention=attention_weight > 0)
    if t.encoder != s.encoder:
        raise ArchsmithError("student", f"a {s.family} student cannot learn from a {t.family} teacher: both encoders or both causal LMs")
    if attention_weight > 0 and not t.encoder:
        raise ArchsmithError("attention_weight", "attention transfer reads transformers' attention maps: encoders only; use 0 for LMs")
    if t.config["vocab_size"] != s.config["vocab_size"]:
        raise ArchsmithError("student", f"vocabulary {s.config['vocab_size']:,} differs from the teacher's {t.config['vocab_size']:,}: "
                                        "distillation compares outputs token by token, so both need the same tokenizer")
    tokenizer = t.tokenizer or s.tokenizer
    if tokenizer is None:
        raise ArchsmithError("teacher", f"{t.path} and {s.path} have no tokenizer files to read --data with")
    t.tokenizer = s.tokenizer = tokenizer
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    samples = read_samples(data, s, seq, eos)
    if len(samples) < 2:
        raise ArchsmithError("data", f"makes {len(samples)} sample(s) of up to {seq} tokens; distillation needs at least 2")
    if s.encoder:
        collate = partial(encoder_batch, pad_id=pad)
    else:
        from archsmith.train.data import lm_batch

        collate = partial(lm_batch, pad_id=pad, eos_id=eos if eos is not None else pad)

    say(f"fidelity before, on {len(held_texts)} held-out texts")
    before = comp.fidelity(t.as_teacher(), s.model, held_texts)
    mapping = layer_map(s, len(t.layers))
    s_hooks, t_hooks = LayerOutputs(s.layers), LayerOutputs(t.layers)
    extra = {}
    if hidden_weight > 0 and s.width != t.width:
        extra["proj"] = fit_projection(s, t, collate([samples[i] for i in range(min(len(samples), batch))]), mapping, s_hooks, t_hooks)
    objective = Objective(t, s_hooks, t_hooks, mapping, s.encoder, temperature, alpha, hidden_weight, attention_weight)
    config = TrainConfig(steps=steps, global_batch=min(batch, len(samples)), lr=lr, warmup=max(1, steps // 20), seed=seed,
                         weight_decay=0.01, progress=progress, unused_parameters=s.encoder)
    say(f"distilling: {steps} steps of {config.global_batch} samples")
    trainer = Trainer(s.model, objective, samples, collate, out, config, extra=extra,
                      save_model=partial(_save_with_tokenizer, s.path if s.tokenizer is not None else t.path))
    summary = trainer.fit(resume=resume)
    s.model.eval()
    say("fidelity after")
    after = comp.fidelity(t.as_teacher(), s.model, held_texts)
    report = {
        "teacher": str(teacher), "student": str(student), "family": s.family, "final": str(out / "final"),
        "settings": {"steps": steps, "temperature": temperature, "alpha": alpha, "hidden_weight": hidden_weight,
                     "attention_weight": attention_weight, "lr": lr, "batch": config.global_batch, "seq": seq, "seed": seed},
        "objective": ("in-batch similarity MSE" if s.encoder else f"{alpha:g} x T^2 KL + {1 - alpha:g} x cross-entropy")
                     + (f" + {hidden_weight:g} x hidden relative MSE" if hidden_weight > 0 else "")
                     + (f" + {attention_weight:g} x attention MSE" if attention_weight > 0 else ""),
        "layer_map": mapping, "projection": "proj" in extra, "samples": len(samples), "heldout_texts": len(held_texts),
        "fidelity": {"before": before, "after": after},
        "training": {k: summary.get(k) for k in ("steps", "tokens", "first_loss", "last_loss", "tokens_per_s", "elapsed_s", "stop_reason")},
    }
    write_file(out / "fidelity.png", fidelity_chart(before, after, s.encoder), overwrite=True)
    write_file(out / "distillation.json", json.dumps(report, indent=2) + "\n", overwrite=True)
    report["files"] = [str(out / name) for name in ("final", "distillation.json", "fidelity.png", "loss.png", "metrics.jsonl")]
    return report
