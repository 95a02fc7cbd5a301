"""Published scores: what a model card's `model-index` reports, read as data.

    scores, problems = reported_scores(card_metadata)

The card's YAML front matter (already parsed safely by `hub.card_metadata`) may carry

    model-index:
      - name: my-model
        results:
          - task: {type: text-classification, name: Sentiment}
            dataset: {type: imdb, name: IMDB, config: plain_text, split: test}
            metrics: [{type: accuracy, value: 0.93, name: Accuracy, verified: false}]
            source: {name: Open LLM Leaderboard, url: https://...}

Each metric becomes one row with its task, dataset and source; values must be finite numbers (numeric strings are
read, percentages stay as written), strings are cut to size and rows beyond MAX_SCORES are dropped and said so.
Nothing here is trusted: a row that does not have this shape is skipped with a problem naming where it was.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_SCORES = 64  # rows kept from one card
TEXT = 120  # characters kept of any string
URL = 300


def _text(value: Any, limit: int = TEXT) -> str | None:
    return value[:limit] if isinstance(value, str) and value.strip() else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().rstrip("%"))
        except ValueError:
            return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def reported_scores(card: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """(score rows, problems) from a parsed card's `model-index`; ([], []) when the card has none."""
    index = card.get("model-index")
    if index is None:
        return [], []
    problems: list[str] = []
    if not isinstance(index, list):
        return [], ["model-index: not a list; no reported scores read"]
    rows: list[dict[str, Any]] = []
    dropped = 0
    for i, entry in enumerate(index[:MAX_SCORES]):
        results = entry.get("results") if isinstance(entry, dict) else None
        if not isinstance(results, list):
            problems.append(f"model-index[{i}]: no results list; skipped")
            continue
        for j, result in enumerate(results[:MAX_SCORES]):
            where = f"model-index[{i}].results[{j}]"
            task = result.get("task") if isinstance(result, dict) else None
            dataset = result.get("dataset") if isinstance(result, dict) else None
            metrics = result.get("metrics") if isinstance(result, dict) else None
            if not isinstance(task, dict) or not isinstance(dataset, dict) or not isinstance(metrics, list):
                problems.append(f"{where}: needs task, dataset and metrics; skipped")
                continue
            source = result.get("source") if isinstance(result.get("source"), dict) else {}
            url = _text(source.get("url"), URL)
            for k, metric in enumerate(metrics[:MAX_SCORES]):
                value = _number(metric.get("value")) if isinstance(metric, dict) else None
                kind = _text(metric.get("type")) if isinstance(metric, dict) else None
                if value is None or kind is None:
                    problems.append(f"{where}.metrics[{k}]: needs a metric type and a finite value; skipped")
                    continue
                if len(rows) == MAX_SCORES:
                    dropped += 1
                    continue
                rows.append({
                    "model": _text(entry.get("name")), "task": _text(task.get("type")), "task_name": _text(task.get("name")),
                    "dataset": _text(dataset.get("type")), "dataset_name": _text(dataset.get("name")),
                    "config": _text(dataset.get("config")), "split": _text(dataset.get("split")),
                    "metric": kind, "metric_name": _text(metric.get("name")), "value": value,
                    "verified": metric.get("verified") is True,
                    "source": _text(source.get("name")) or "the model card",
                    "url": url if url and url.startswith(("https://", "http://")) else None,
                })
    if dropped:
        problems.append(f"model-index: {dropped} more scores beyond the first {MAX_SCORES} not read")
    return rows, problems


RATIOS = {"acc", "accuracy", "accnorm", "exactmatch", "f1", "mcc", "top1", "top5"}  # fraction metrics, as `key` writes them


def key(text: str | None) -> str:
    """A name compared across cards and harness tasks: letters and digits, lower case (`ARC-Challenge` = `arc_challenge`)."""
    return re.sub(r"[^a-z0-9]", "", (text or "").lower())


def about(row: dict[str, Any], task: str) -> bool:
    """Whether a reported row is about `task`: its dataset type, name or config, or its task name, is the task's name."""
    return key(task) in {key(row.get(f)) for f in ("dataset", "dataset_name", "config", "task_name") if row.get(f)}


def fraction(row: dict[str, Any]) -> float:
    """The row's value as a fraction where the metric is one and the card wrote a percentage."""
    value = row["value"]
    return value / 100 if key(row["metric"]) in RATIOS and 1 < value <= 100 else value


def score_for(rows: list[dict[str, Any]], task: str) -> dict[str, Any] | None:
    """The first score a card reports for `task` (card order), with `fraction` set; None when it reports none."""
    row = next((r for r in rows if about(r, task)), None)
    return None if row is None else {**row, "fraction": fraction(row)}
