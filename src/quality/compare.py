"""Measured against reported: a measured task metric beside the card's `model-index` score for the same task.

A reported row matches a measured task when the normalised task name (letters and digits, lower case) equals the
row's dataset type, dataset name, dataset config or task name (`arc_challenge` matches dataset `ai2_arc` with
config `ARC-Challenge`), and the metric names agree (`accuracy` is `acc`). Reported percentages (values above 1
where the measured metric is a fraction) are read as percent. A gap is flagged when it is larger than
`Z` standard errors of the measurement (95%): a smaller one is what the sample size allows.
"""

from __future__ import annotations

from typing import Any

from archsmith.baselines import about, fraction, key

Z = 2.0
ALIASES = {"accuracy": "acc", "accnorm": "acc_norm", "accuracynorm": "acc_norm", "normalizedaccuracy": "acc_norm",
           "exactmatch": "exact_match", "em": "exact_match", "f1score": "f1"}


def _metric(text: str | None) -> str:
    return ALIASES.get(key(text), (text or "").lower())


def against(results: dict[str, dict[str, Any]], reported: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (measured task, metric) with a reported score: both values, the gap, its size in stderr, flagged."""
    rows = []
    for task, metrics in results.items():
        for score in reported:
            if not about(score, task):
                continue
            metric = _metric(score.get("metric"))
            value = metrics.get(metric)
            if value is None:
                continue
            published = fraction(score) if value <= 1 else float(score["value"])
            percent = published != score["value"]
            stderr = metrics.get(f"{metric}_stderr")
            gap = value - published
            z = gap / stderr if stderr else None
            rows.append({"task": task, "metric": metric, "measured": value, "stderr": stderr, "reported": published,
                         "reported_as_percent": percent, "gap": gap, "gap_in_stderr": z,
                         "flagged": stderr is not None and abs(gap) > Z * stderr + 1e-12, "source": score.get("source"),
                         "url": score.get("url"), "samples": metrics.get("samples")})
    return rows
