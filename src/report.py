"""Render `architecture_report.md` and `capacity_plan.md` (Jinja2) and their charts (matplotlib).

Templates only lay out values the engine computed; the filters here only format numbers.
"""

from __future__ import annotations

import io
import json
from importlib import resources
from typing import Any

from archsmith import estimate as est
from archsmith.design import capacity_plan
from archsmith.hfconfig import hf_from_spec
from archsmith.train.parallel import launch_plan
from archsmith.units import human_bytes, human_count, human_duration

MEMORY_PARTS = (  # (key in training_memory / sharded_memory, label)
    ("weights_bytes", "weights (bf16)"),
    ("gradients_bytes", "gradients (bf16)"),
    ("optimizer_bytes", "fp32 master + AdamW m, v"),
    ("activations_bytes", "activations + logits"),
)


def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: resources.files("archsmith.templates").joinpath(name).read_text(encoding="utf-8")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(count=human_count, bytes=human_bytes, duration=human_duration,
                       flops=lambda x: f"{x:.3g}", pct=lambda x: f"{100 * x:.1f}%", commas=lambda x: f"{int(x):,}")
    return env


def _stacked_bars(title: str, labels: list[str], rows: list[dict[str, Any]], limit: float | None, limit_label: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    bottom = [0.0] * len(rows)
    for key, label in MEMORY_PARTS:
        values = [r[key] / 2**30 for r in rows]
        ax.bar(labels, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    for x, total in enumerate(bottom):
        ax.text(x, total, f"{total:.1f}", ha="center", va="bottom", fontsize=8)
    if limit:
        ax.axhline(limit / 2**30, color="black", linestyle="--", linewidth=1, label=limit_label)
    ax.set_ylabel("GiB per GPU")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_design(result: dict[str, Any], out_dir: str | None = None) -> dict[str, bytes | str]:
    """All files of `archsmith design` into `out_dir`: config.json, the two reports and their charts
    (and the tokenizer files when the design read a tokenizer)."""
    rec = result["recommended"]
    spec = rec.spec
    counts = rec.summary["params"]
    plan = capacity_plan(spec, result["gpu"], result["gpus"], rec.summary["train_tokens"], result["mfu"])
    config = hf_from_spec(spec)
    env = _env()
    ctx = {
        "result": result,
        "rec": rec,
        "spec": spec,
        "counts": counts,
        "layer_table": _layer_table(spec),
        "plan": plan,
        "launch": launch_plan(plan["strategies"], result["gpus"], out_dir or "DESIGN_DIR", spec.context_length,
                              plan["micro_batch"], plan["tokens"]),
        "config_json": json.dumps(config, indent=2),
        "memory_parts": MEMORY_PARTS,
    }
    arch_chart = _stacked_bars(
        f"Training memory per GPU, {result['strategy']} over {result['gpus']} x {result['gpu']['id']} (micro-batch 1, checkpointing)",
        [c.name for c in result["candidates"]],
        [c.summary["memory_per_gpu"] for c in result["candidates"]],
        plan["usable_bytes"], f"{result['gpu']['id']} usable ({plan['usable_fraction']:.0%})",
    )
    plan_rows = [r for r in plan["strategies"] if r["checkpointing"]] + [r for r in plan["strategies"] if not r["checkpointing"]]
    plan_chart = _stacked_bars(
        f"{spec.hidden_size} x {spec.num_layers} ({human_count(counts['total'])}): memory per GPU by strategy, {result['gpus']} GPUs",
        [f"{r['strategy']}{' +ckpt' if r['checkpointing'] else ''}" for r in plan_rows],
        plan_rows, plan["usable_bytes"], f"{result['gpu']['id']} usable",
    )
    files = {
        "config.json": json.dumps(config, indent=2) + "\n",
        "architecture_report.md": env.get_template("architecture_report.md.j2").render(**ctx),
        "capacity_plan.md": env.get_template("capacity_plan.md.j2").render(**ctx),
        "architecture_memory.png": arch_chart,
        "capacity_memory.png": plan_chart,
    }
    if result.get("tokenizer"):  # the design directory becomes a complete Hugging Face model directory
        from archsmith.tokenizer import tokenizer_files

        files.update(tokenizer_files(result["tokenizer"]["path"]))
    return files


def _layer_table(spec) -> list[dict[str, Any]]:
    """Per-tensor rows of one decoder block plus the model-level tensors."""
    counts = est.count_params(spec)
    rows = [{"name": t.name, "shape": " x ".join(map(str, t.shape)), "params": t.numel} for t in est.layer_tensors(spec)]
    rows.append({"name": f"one block (x {spec.num_layers})", "shape": "", "params": counts["per_layer"]})
    rows.append({"name": "embed_tokens", "shape": f"{spec.vocab_size} x {spec.hidden_size}", "params": counts["embedding"]})
    rows.append({"name": "norm (final)", "shape": str(spec.hidden_size), "params": counts["final_norm"]})
    rows.append({"name": "lm_head" + (" (tied to embed_tokens)" if spec.tie_embeddings else ""),
                 "shape": f"{spec.vocab_size} x {spec.hidden_size}", "params": counts["lm_head"]})
    return rows


def render_template(name: str, context: dict[str, Any]) -> str:
    """Render one template from `templates/` with `context` (used for the fine-tuning scripts of `hub`)."""
    return _env().get_template(name).render(**context)
