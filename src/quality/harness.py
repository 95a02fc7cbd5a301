"""Runs lm-evaluation-harness tasks on a loaded model and reads its results back as plain rows.

Tasks come from the harness's registry or from local task definitions (YAML + data files) in `include` directories,
as the harness's own `--include_path` finds them; a directory that defines every requested task is indexed alone
(the registry's ~15,000 definitions take seconds to index). `text` adds a perplexity task over a local text file
(one document per blank-line-separated paragraph): word and byte perplexity and bits per byte, as the harness's
wikitext task computes them.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import re
from pathlib import Path
from typing import Any

from archsmith.errors import ArchsmithError

TEXT_TASK = "heldout_text"
BOOTSTRAP_ITERS = 1000  # stderr of metrics without a closed form (perplexities); the harness's default is 100,000
MAX_TASKS = 32


def task_manager(tasks: list[str], include: list[Path], allow_code: bool = True,
                 fields: tuple[str, str] = ("tasks", "include")):
    """A TaskManager that knows every name in `tasks`; unknown names are one error with the nearest known names.
    Without `allow_code`, task YAMLs that load Python (`!function`) are refused. Errors name `fields` (the caller's
    names for the tasks and the include directories)."""
    tasks_field, include_field = fields
    from lm_eval.tasks import TaskManager

    for d in include:
        if not d.is_dir():
            raise ArchsmithError(include_field, f"{d} is not a directory of task YAML files")
        coded = [] if allow_code else [f for f in sorted(d.rglob("*.y*ml")) if b"!function" in f.read_bytes()[:1_000_000]]
        if coded:
            raise ArchsmithError(include_field, f"{coded[0]} loads Python (!function), which this server refuses; start it "
                                            "with code allowed, or run `archsmith eval` yourself")
    wanted = [t for t in tasks if t != TEXT_TASK]
    manager = TaskManager(include_path=[str(d) for d in include] or None, include_defaults=False)
    local = list(manager.all_tasks)
    unknown = [t for t in wanted if t not in local and not _in_registry_files(t)]  # no index needed to know these
    if not unknown and not set(wanted) <= set(local):
        manager = TaskManager(include_path=[str(d) for d in include]) if include else _registry()
        unknown = [t for t in wanted if t not in manager.all_tasks]
    if unknown:
        known = manager.all_tasks if manager.all_tasks != local else {f.stem for f in _registry_files()}
        near = difflib.get_close_matches(unknown[0], local + sorted(k for k in known if k[:2] == unknown[0][:2]), n=3)
        raise ArchsmithError(tasks_field, f"unknown task {unknown[0]!r}" + (f" (did you mean {', '.join(near)}?)" if near else "")
                             + "; tasks are lm-evaluation-harness names or YAML definitions in the include directories")
    return manager


@functools.cache
def _registry_files() -> tuple[Path, ...]:
    import lm_eval.tasks

    return tuple(Path(lm_eval.tasks.__file__).parent.rglob("*.y*ml"))


@functools.cache
def _registry_words() -> frozenset[str]:
    """Every word of the harness's task YAMLs, read once per process (a second, where indexing them takes ten)."""
    return frozenset(w.decode() for f in _registry_files() for w in re.findall(rb"[\w.-]+", f.read_bytes()))


def _in_registry_files(name: str) -> bool:
    """Whether the harness's task YAMLs mention `name`: one they never mention is no registry task, group or tag."""
    return name in _registry_words()


@functools.cache
def _registry():
    """The harness's own tasks, indexed once per process (seconds: ~15,000 definitions)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def local_config(manager, name: str, include: list[Path]) -> str | dict[str, Any]:
    """A task defined by a YAML under `include` as its config dict, with relative data files resolved against the
    YAML's directory (the harness resolves them against the working directory); other names as they are."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from archsmith.files import kind

    entry = manager.task_index.get(name)
    yaml_path = getattr(entry, "yaml_path", None)
    if yaml_path is None or not any(Path(yaml_path).resolve().is_relative_to(d.resolve()) for d in include):
        return name
    config = load_yaml(yaml_path, resolve_func=True)
    if config.get("task") != name:
        return name  # a group or tag: the harness expands it
    kwargs = config.get("dataset_kwargs") or {}
    base = Path(yaml_path).resolve().parent

    def resolved(value):
        if isinstance(value, str):
            if "://" in value:
                return value
            path = Path(value) if Path(value).is_absolute() else base / value
            kind(path, "include")  # inside the workspace when there is one
            return str(path)
        if isinstance(value, list):
            return [resolved(v) for v in value]
        return {k: resolved(v) for k, v in value.items()} if isinstance(value, dict) else value

    for key in ("data_files", "data_dir"):
        if key in kwargs:
            kwargs[key] = resolved(kwargs[key])
    return config


def text_task(path: Path) -> dict[str, Any]:
    """A loglikelihood_rolling task config over a local text file (paragraphs as documents)."""
    if not path.is_file():
        raise ArchsmithError("text", f"{path} is not a file")
    return {"task": TEXT_TASK, "dataset_path": "text",
            "dataset_kwargs": {"data_files": {"test": str(path.resolve())}, "sample_by": "paragraph"},
            "test_split": "test", "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
            "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")]}


def run(lm, tasks: list[str], include: list[Path] = (), text: Path | None = None, limit: int | None = None,
        fewshot: int | None = None, seed: int = 0, allow_code: bool = True) -> dict[str, Any]:
    """Evaluate `lm` (a harness LM) on `tasks` (+ `text`); {"results": {task: {metric: value, metric_stderr: ...,
    "samples": n}}, "higher_is_better": {task: {metric: bool}}, "versions": {...}}."""
    import lm_eval

    if len(tasks) > MAX_TASKS:
        raise ArchsmithError("tasks", f"at most {MAX_TASKS} tasks per run; got {len(tasks)}")
    if fewshot is not None and not 0 <= fewshot <= 25:
        raise ArchsmithError("fewshot", f"must be 0 to 25 examples; got {fewshot}")
    if not tasks and text is None:
        raise ArchsmithError("tasks", "name at least one task (or --text FILE for perplexity)")
    extra = [text_task(text)] if text is not None else []
    manager = task_manager(list(tasks), list(include), allow_code)
    configs = [local_config(manager, t, include) for t in tasks] + extra
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        raw = lm_eval.simple_evaluate(model=lm, tasks=configs, task_manager=manager, limit=limit, num_fewshot=fewshot,
                                      bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False, random_seed=seed,
                                      numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        raise ArchsmithError("tasks", f"the harness could not run them: {type(exc).__name__}: {str(exc)[:200]}") from None
    return read_results(raw)


def read_results(raw: dict[str, Any]) -> dict[str, Any]:
    """The harness's `results` with its metric names (`acc`, `acc_norm`, `acc_stderr`, ...): the default filter's
    ",none" suffix dropped, other filters kept as `metric,filter`; a stderr it could not compute is None."""
    results: dict[str, dict[str, Any]] = {}
    for task, metrics in raw["results"].items():
        row: dict[str, Any] = {}
        for key, value in metrics.items():
            if "," not in key:
                continue  # alias, sample_len, ...
            name = key[:-5] if key.endswith(",none") else key
            row[name] = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
        row["samples"] = int(raw.get("n-samples", {}).get(task, {}).get("effective", 0)) or None
        results[task] = row
    higher = {t: {m: bool(v) for m, v in d.items()} for t, d in raw.get("higher_is_better", {}).items()}
    return {"results": results, "higher_is_better": higher, "versions": dict(raw.get("versions", {}))}
