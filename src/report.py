"""Render `architecture_report.md` and `capacity_plan.md` (Jinja2) and their charts (matplotlib).

Templates only lay out values the engine computed; the filters here only format numbers. Templates
that produce code (`*.py.j2`) accept no bare value: each `{{ ... }}` goes through `| literal` (a Python
literal of plain data: what comes from outside stays data) or `| identifier` (a name from our own tables).
"""

from __future__ import annotations

import ast
import io
import json
import keyword
from importlib import resources
from typing import Any

from archsmith import estimate as est
from archsmith.design import capacity_plan, data_lines, launch_plan_of, layout_launch
from archsmith.hfconfig import hf_from_spec
from archsmith.layouts import REASONS
from archsmith.peak import ALLOCATOR_HEADROOM
from archsmith.units import human_bytes, human_count, human_duration

MEMORY_COLUMNS = (  # (key in `sharded_memory`, column header): every memory table and chart shows exactly these
    ("weights_bytes", "weights (bf16)"),
    ("gradients_bytes", "gradients (bf16)"),
    ("optimizer_bytes", "fp32 master + AdamW m, v"),
    ("communication_buffers_bytes", "buffers"),
    ("activations_bytes", "activations + step peak"),
)
LAYOUT_ROWS = 40  # the capacity plan lists this many layouts (feasible first); `design --json` has them all
LIMIT_IN_RANGE = 1.5  # draw the limit line when it is at most 1.5x the tallest bar; higher, it would squash the bars


class Code(str):
    """Text already made safe to place in generated code (by `literal` or `identifier`)."""


def literal(value: Any) -> Code:
    """`value` as a Python literal: the repr of plain data (str, numbers, bools, None, lists, dicts), checked by parsing it back."""
    text = repr(value)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError, RecursionError):
        same = False
    if not same:
        raise ValueError(f"not plain data, so not rendered into code: {text[:60]}")
    return Code(text)


def identifier(value: Any) -> Code:
    """A Python name (a class or dtype from our own tables), refused unless it is one."""
    if not isinstance(value, str) or not value.isidentifier() or keyword.iskeyword(value):
        raise ValueError(f"not a Python identifier, so not rendered into code: {value!r:.60}")
    return Code(value)


def _code_only(value: Any) -> Any:
    """Jinja `finalize` for code templates: every expression must have gone through `literal` or `identifier`."""
    if not isinstance(value, Code):
        raise ValueError(f"a value in a code template must be rendered with | literal or | identifier: {value!r:.60}")
    return value


def _env(code: bool = False):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: resources.files("archsmith.templates").joinpath(name).read_text(encoding="utf-8")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        **({"finalize": _code_only} if code else {}),
    )
    env.filters.update(count=human_count, bytes=human_bytes, duration=human_duration,
                       flops=lambda x: f"{x:.3g}", pct=lambda x: f"{100 * x:.1f}%", commas=lambda x: f"{int(x):,}",
                       literal=literal, identifier=identifier)
    return env


def memory_tables(result: dict[str, Any], plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of the two memory tables, which their charts draw bar for bar: the candidates under the design's
    training plan (architecture report) and every strategy for the recommended design (capacity plan)."""
    setting = design_setting(result["training"])
    return {
        "architecture_memory.png": {
            "title": f"Training memory per GPU: {setting}",
            "labels": [c.name for c in result["candidates"]],
            "rows": [{**c.summary["memory_per_gpu"], "fits": c.summary["fits"]} for c in result["candidates"]],
        },
        "capacity_memory.png": {
            "title": f"{human_count(result['recommended'].summary['params']['total'])} model: memory per GPU by strategy, "
                     f"{plan['gpus']} GPU(s), micro-batch {plan['micro_batch']} x {plan['seq']}",
            "labels": [f"{r['strategy']}{' +ckpt' if r['checkpointing'] else ''}{chr(10) + '(assumed)' if r['chosen'] else ''}"
                       for r in plan["strategies"]],
            "rows": plan["strategies"],
        },
    }


def design_setting(training: dict[str, Any]) -> str:
    """'zero3 + checkpointing, micro-batch 1 x 4096, 8 GPUs'."""
    return (f"{training['strategy']}{' + checkpointing' if training['checkpointing'] else ''}, "
            f"micro-batch {training['micro_batch']} x {training['seq']}, {training['gpus']} GPU(s)")


def memory_figure(title: str, labels: list[str], rows: list[dict[str, Any]], limit: int, limit_label: str):
    """Stacked bars of MEMORY_COLUMNS for each row, in GiB (MiB when every bar is under 1 GiB). The limit is a line when
    it lies within LIMIT_IN_RANGE of the tallest bar, else a legend entry, so small models' bars fill the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tallest = max(r["total_bytes"] for r in rows)
    unit, unit_name = (2**30, "GiB") if tallest >= 2**30 else (2**20, "MiB")
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    bottom = [0.0] * len(rows)
    for key, header in MEMORY_COLUMNS:
        values = [r[key] / unit for r in rows]
        ax.bar(labels, values, bottom=bottom, label=header)
        bottom = [b + v for b, v in zip(bottom, values)]
    for x, row in enumerate(rows):
        ax.text(x, row["total_bytes"] / unit, human_bytes(row["total_bytes"]), ha="center", va="bottom", fontsize=8)
    top = tallest
    if limit <= LIMIT_IN_RANGE * tallest:
        ax.axhline(limit / unit, color="black", linestyle="--", linewidth=1, label=f"{limit_label}: {human_bytes(limit)}")
        top = max(top, limit)
    else:
        ax.add_line(Line2D([], [], color="black", linestyle="--", linewidth=1, label=f"{limit_label}: {human_bytes(limit)} (above the axis)"))
    ax.set_ylim(0, 1.12 * top / unit)  # headroom for the total above each bar
    ax.set_ylabel(f"{unit_name} per GPU")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def memory_charts(result: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """The two memory charts as matplotlib figures, drawn from `memory_tables`."""
    label = "limit" if plan["limit"]["bytes"] < plan["limit"]["device_usable_bytes"] else f"{result['gpu']['id']} usable"
    return {name: memory_figure(t["title"], t["labels"], t["rows"], plan["limit"]["bytes"], label)
            for name, t in memory_tables(result, plan).items()}


def render_design(result: dict[str, Any], out_dir: str | None = None) -> dict[str, bytes | str]:
    """All files of `archsmith design` into `out_dir`: config.json, the two reports and their charts
    (and the tokenizer files when the design read a tokenizer)."""
    rec = result["recommended"]
    spec = rec.spec
    plan = design_plan(result)
    config = hf_from_spec(spec)
    env = _env()
    ctx = {
        "result": result,
        "rec": rec,
        "spec": spec,
        "counts": rec.summary["params"],
        "layer_table": _layer_table(spec),
        "plan": plan,
        "launch": launch_plan_of(result, out_dir or "DESIGN_DIR"),
        "recipe": result["recipe"],
        "recipe_lines": result["recipe_lines"],
        "data_lines": data_lines(result["data"]),
        "layouts": result.get("layouts"),
        "layout_launch": layout_launch(result, out_dir or "DESIGN_DIR"),
        "layout_rows": LAYOUT_ROWS,
        "reasons": REASONS,
        "config_json": json.dumps(config, indent=2),
        "memory_columns": MEMORY_COLUMNS,
        "memory_tables": memory_tables(result, plan),
        "setting": design_setting(result["training"]),
        "headroom": ALLOCATOR_HEADROOM,
    }
    files = {
        "config.json": json.dumps(config, indent=2) + "\n",
        "architecture_report.md": env.get_template("architecture_report.md.j2").render(**ctx),
        "capacity_plan.md": env.get_template("capacity_plan.md.j2").render(**ctx),
        **{name: _png(fig) for name, fig in memory_charts(result, plan).items()},
    }
    if result["search"]:  # the study behind the recommendation: its database, JSON and Pareto chart
        files.update(result["search"]["files"])
    if result.get("tokenizer"):  # the design directory becomes a complete Hugging Face model directory
        from archsmith.tokenizer import tokenizer_files

        files.update(tokenizer_files(result["tokenizer"]["path"]))
    return files


def design_plan(result: dict[str, Any]) -> dict[str, Any]:
    """The capacity plan of the recommended design, under the design's limit and training settings."""
    rec, training = result["recommended"], result["training"]
    return capacity_plan(rec.spec, result["gpu"], result["gpus"], rec.summary["train_tokens"], result["mfu"],
                         micro_batch=training["micro_batch"], seq=training["seq"], limit=result["limit"], setup=training)


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
    """Render one template from `templates/` with `context` (used for the fine-tuning scripts of `hub`).

    A code template (`*.py.j2`) renders every value through `| literal` or `| identifier`, or fails.
    """
    return _env(code=name.endswith(".py.j2")).get_template(name).render(**context)
