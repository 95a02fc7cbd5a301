"""Measured quality: a model's task metrics, beside what its card reports.

    result = evaluate("runs/tiny", tasks=["story_end"], include=["tests/data/tasks"], limit=50)
    result["results"]["story_end"]  # {"acc": 0.9, "acc_stderr": 0.04, "acc_norm": ..., "samples": 50}

The model is a directory (config.json, safetensors, tokenizer files; a training run's `final/` is found from the
run directory) or a Hub id (its config, tokenizer, card and safetensors are downloaded; remote code never runs).
Language models run lm-evaluation-harness tasks (`harness`, `language`); image classifiers give top-1/top-5 on a
local image folder (`vision`); text encoders give classification, similarity and retrieval metrics on local data
(`encoders`). The card's `model-index` scores, where it has any, are set against the measurement (`compare`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

from archsmith.errors import ArchsmithError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
DOWNLOADED = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer*",
              "special_tokens_map.json", "vocab.*", "merges.txt", "*.model", "preprocessor_config.json", "README.md"]
ENGINES = ("transformers", "network")


def task_list(*given: str | None) -> list[str]:
    """Task names from comma lists (`"a,b"`, repeated options): stripped, empty ones dropped."""
    return [name.strip() for text in given if text for name in text.split(",") if name.strip()]


def values(metrics: dict[str, Any]) -> dict[str, float]:
    """A task's measured metrics without their stderr and sample count: {metric: value}, unmeasured ones left out."""
    return {m: v for m, v in metrics.items() if m != "samples" and not m.endswith("_stderr") and v is not None}


def stderr(hits: list[bool]) -> float | None:
    """Standard error of the mean of 0/1 hits (sample standard deviation / sqrt(n)), as the harness computes it."""
    n = len(hits)
    if n < 2:
        return None
    p = sum(hits) / n
    return math.sqrt(p * (1 - p) * n / (n - 1) / n)


def harness_module(field: str):
    """lm_eval, or one error naming `field` and the extra that installs it."""
    try:
        import lm_eval
    except ImportError:
        raise ArchsmithError(field, "need lm-evaluation-harness: pip install 'archsmith[eval]'") from None
    return lm_eval


def model_dir(model: str) -> tuple[Path, str | None]:
    """(the model directory, its Hub id or None): a directory as given (a run directory: its final/), else a Hub id
    whose config, tokenizer, card and safetensors weights are downloaded into the Hugging Face cache."""
    from archsmith.files import kind

    path = Path(model)
    found = kind(path, "model")
    if found == "dir":
        if kind(path / "config.json", "model") != "file" and kind(path / "final" / "config.json", "model") == "file":
            path = path / "final"  # a training run: its final model
        if kind(path / "config.json", "model") != "file":
            raise ArchsmithError("model", f"{model} has no config.json (a model directory, a training run or a Hub id)")
        return path, None
    if found is not None or not HUB_ID.match(model) or ".." in model:
        raise ArchsmithError("model", f"{model!r} is neither a model directory nor a Hub id (owner/name)")
    from archsmith import hub

    try:
        snapshot = hub.call(hub.api().snapshot_download, model, allow_patterns=DOWNLOADED, what=model)
    except hub.HubError as exc:
        raise ArchsmithError("model", str(exc)) from None
    return Path(snapshot), model


def reported(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The card's model-index scores (README.md front matter), read as data; ([], []) without a card."""
    from archsmith.baselines import reported_scores
    from archsmith.files import kind, read_text
    from archsmith.hub import card_sections

    card = path / "README.md"
    if kind(card, "model") != "file":
        return [], []
    problems: list[str] = []
    meta, _ = card_sections(read_text(card, "model"), problems)
    rows, more = reported_scores(meta)
    return rows, problems + more


def evaluate(model: str, tasks: list[str] = (), include: list[str | Path] = (), text: str | Path | None = None,
             images: str | Path | None = None, data: str | Path | None = None, limit: int | None = None,
             fewshot: int | None = None, batch: int = 8, engine: str = "transformers", seed: int = 0,
             allow_code: bool = True) -> dict[str, Any]:
    """Measure `model`: lm-evaluation-harness `tasks` (names, or YAML definitions under `include`) and the perplexity
    of `text` for a causal LM; top-1/top-5 on an `images` folder for an image classifier; encoder metrics on a `data`
    JSONL. Task YAMLs that load Python (`!function`) need `allow_code`. {"results": {task: {metric: value,
    metric_stderr: ..., "samples": n}}, "comparison": [...] (measured vs the card's model-index), "reported": [...],
    "settings": {...}}."""
    from archsmith.quality import compare

    if engine not in ENGINES:
        raise ArchsmithError("engine", f"must be one of {', '.join(ENGINES)}; got {engine!r}")
    if not 1 <= batch <= 512:
        raise ArchsmithError("batch", f"must be 1 to 512 per forward pass; got {batch}")
    if limit is not None and limit < 1:
        raise ArchsmithError("limit", f"must be at least 1 example; got {limit}")
    given = [name for name, v in (("tasks", tasks or text), ("images", images), ("data", data)) if v]
    if len(given) != 1:
        raise ArchsmithError("tasks", "give one of --tasks/--text (language model), --images DIR (image classifier) or "
                                      f"--data FILE (text encoder); got {', '.join(given) or 'none'}")
    path, hub_id = model_dir(model)
    scores, problems = reported(path)
    settings: dict[str, Any] = {"batch": batch, "limit": limit, "dtype": "float32"}
    if images:
        from archsmith.quality import vision

        measured = vision.evaluate(path, Path(images), limit, batch)
        kind, settings["processor"] = "image-classification", measured.pop("processor")
    elif data:
        from archsmith.quality import encoders

        measured = encoders.evaluate(path, Path(data), limit, batch)
        kind = f"encoder-{measured.pop('kind')}"
        settings.update(measured.pop("settings"))
    else:
        measured, kind = _language(path, list(tasks), include, text, limit, fewshot, batch, engine, seed, allow_code,
                                    settings), "language"
    return {"model": model, "path": str(path), "hub_id": hub_id, "kind": kind, "params": measured["params"],
            "results": measured["results"], "higher_is_better": measured["higher_is_better"], "reported": scores,
            "comparison": compare.against(measured["results"], scores), "settings": settings, "problems": problems}


def _language(path: Path, tasks: list[str], include, text, limit, fewshot, batch: int, engine: str, seed: int,
              allow_code: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """The harness run on a causal LM; its settings added to `settings`."""
    lm_eval = harness_module("tasks")
    from archsmith.quality import harness
    from archsmith.quality.language import HarnessLM, load_lm

    lm = HarnessLM(load_lm(path, engine), batch_size=batch)
    measured = harness.run(lm, tasks, [Path(d) for d in include], Path(text) if text else None, limit, fewshot, seed,
                           allow_code)
    settings.update(engine=engine, device=lm.loaded.device, fewshot=fewshot, seed=seed, max_length=lm.loaded.max_length,
                    add_special_tokens=False, include=[str(d) for d in include], text=str(text) if text else None,
                    harness=f"lm-evaluation-harness {lm_eval.__version__}", task_versions=measured.pop("versions"),
                    bootstrap_iters=harness.BOOTSTRAP_ITERS)
    return {**measured, "params": lm.loaded.params}


def chart(result: dict[str, Any]) -> Callable[[Path], None]:
    """A writer for a PNG: each task's metrics with +-1 stderr bars, and the reported score where the card has one."""
    def write(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tasks = {t: list(values(v)) for t, v in result["results"].items() if values(v)}
        fig, axes = plt.subplots(len(tasks), 1, figsize=(7, sum(0.4 * len(ms) + 0.9 for ms in tasks.values()) + 0.6),
                                 squeeze=False, height_ratios=[len(ms) + 1 for ms in tasks.values()])
        reported = {(c["task"], c["metric"]): c["reported"] for c in result["comparison"]}
        for ax, (task, names) in zip(axes[:, 0], tasks.items()):
            measured = result["results"][task]
            ax.barh(names, [measured[m] for m in names], xerr=[measured.get(f"{m}_stderr") or 0 for m in names],
                    color="#4c72b0", capsize=3, label="measured (+-1 stderr)")
            marks = [(i, reported[(task, m)]) for i, m in enumerate(names) if (task, m) in reported]
            if marks:
                ax.scatter([v for _, v in marks], [i for i, _ in marks], color="#dd8452", marker="D", zorder=3,
                           label="reported on the card")
            ax.invert_yaxis()
            ax.set_title(f"{task} (n={measured.get('samples')})", fontsize=9)
            ax.legend(loc="lower right", fontsize=7)
        fig.suptitle(f"{result['model']}: measured quality", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
        plt.close(fig)

    return write


def output_files(result: dict[str, Any]) -> dict[str, Any]:
    """What `--out` holds: results.json and the chart (for `files.write_files`)."""
    return {"results.json": json.dumps(result, indent=2) + "\n", "quality.png": chart(result)}


def side_by_side(teacher: str, student: str, **measure: Any) -> dict[str, Any]:
    """The same measurement (`evaluate`'s keyword arguments) on a teacher and its student: one row per task metric with
    both values and the student's share of the teacher's; `settings` as the runs recorded them."""
    before, after = evaluate(teacher, **measure), evaluate(student, **measure)
    rows = []
    for task, metrics in before["results"].items():
        for name, value in values(metrics).items():
            theirs = after["results"].get(task, {}).get(name)
            rows.append({"task": task, "metric": name, "teacher": value, "teacher_stderr": metrics.get(f"{name}_stderr"),
                         "student": theirs, "student_stderr": after["results"].get(task, {}).get(f"{name}_stderr"),
                         "student_over_teacher": theirs / value if theirs is not None and value else None,
                         "samples": metrics.get("samples")})
    return {"kind": before["kind"], "rows": rows, "settings": before["settings"]}


def check_measure(tasks: list[str] = (), include: list[str | Path] = (), data: str | Path | None = None,
                  allow_code: bool = True, prefix: str = "eval_") -> None:
    """Refuse, before hours of other work, a measurement that cannot run: unknown tasks, missing files. Errors name
    the caller's fields: `prefix` + tasks / include / data."""
    if tasks:
        harness_module(f"{prefix}tasks")
        from archsmith.quality.harness import task_manager

        task_manager(list(tasks), [Path(d) for d in include], allow_code, (f"{prefix}tasks", f"{prefix}include"))
    if data is not None and not Path(data).is_file():
        raise ArchsmithError(f"{prefix}data", f"{data} is not a file")
