"""Text encoders: classification, similarity and retrieval metrics on a local JSONL file.

The rows' fields say what is measured (every row of a file has the same shape):

- `{"text", "label"}`: classification by a linear probe, logistic regression on the embeddings, scored on
  held-out folds (5-fold stratified cross-validation): `acc` +- stderr;
- `{"sentence1", "sentence2", "score"}`: similarity, Spearman and Pearson correlation of the embeddings' cosine
  with the gold scores;
- `{"query", "positive"}`: retrieval of each query's positive among all positives: `recall@1`, `recall@5`,
  `mrr@10`.

Embeddings are the mean of the last hidden states over real tokens, L2-normalised (the sentence-transformers
convention for MiniLM-style encoders), at the tokenizer's max length up to 512 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archsmith.errors import ArchsmithError
from archsmith.quality import stderr, values

SHAPES = {"classification": ("text", "label"), "similarity": ("sentence1", "sentence2", "score"),
          "retrieval": ("query", "positive")}
MAX_ROWS = 50_000
MAX_TEXT = 10_000  # characters kept of one text
FOLDS = 5


def read_rows(path: Path, limit: int | None) -> tuple[str, list[dict[str, Any]]]:
    """(kind, rows) of a JSONL file whose rows all have one of SHAPES's field sets."""
    from archsmith.files import read_text

    rows = []
    for n, line in enumerate(read_text(path, "data").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ArchsmithError("data", f"{path}:{n} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ArchsmithError("data", f"{path}:{n} is not a JSON object")
        rows.append(row)
        if len(rows) >= min(limit or MAX_ROWS, MAX_ROWS):
            break
    kinds = [k for k, fields in SHAPES.items() if rows and all(f in rows[0] for f in fields)]
    if not kinds:
        raise ArchsmithError("data", f"{path}: rows need the fields of one of "
                                     + "; ".join(f"{k} ({', '.join(f)})" for k, f in SHAPES.items()))
    kind = kinds[0]
    for n, row in enumerate(rows, 1):
        if any(f not in row for f in SHAPES[kind]):
            raise ArchsmithError("data", f"{path}: row {n} lacks {', '.join(f for f in SHAPES[kind] if f not in row)} ({kind})")
    return kind, rows


def max_length(tokenizer) -> int:
    """Tokens an embedded text keeps: the tokenizer's max length, at most 512."""
    return min(512, tokenizer.model_max_length or 512)


def embed(model, tokenizer, texts: list[str], batch: int):
    """texts -> (N, hidden) L2-normalised mean-pooled embeddings (float32, CPU)."""
    import torch

    out = []
    for start in range(0, len(texts), batch):
        enc = tokenizer([str(t)[:MAX_TEXT] for t in texts[start:start + batch]], padding=True, truncation=True,
                        max_length=max_length(tokenizer), return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].to(hidden.dtype)
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1))
    return torch.cat(out)


def evaluate(path: Path, data: Path, limit: int | None = None, batch: int = 32) -> dict[str, Any]:
    """{"results": {data name: metrics}, "kind": classification|similarity|retrieval}."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from archsmith.analyze import quiet_transformers

    kind, rows = read_rows(data, limit)
    if kind == "similarity" and len(rows) < 3:
        raise ArchsmithError("data", f"similarity needs at least 3 pairs; {data} has {len(rows)}")
    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True, trust_remote_code=False).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise ArchsmithError("model", f"transformers cannot load {path} as an encoder: {str(exc)[:160]}") from None
    settings = {"pooling": "mean over tokens, L2-normalised", "max_length": max_length(tokenizer)}
    if kind == "classification":
        metrics, settings["folds"] = _probe(embed(model, tokenizer, [r["text"] for r in rows], batch).numpy(),
                                            [str(r["label"]) for r in rows])
    elif kind == "similarity":
        from scipy.stats import pearsonr, spearmanr

        a = embed(model, tokenizer, [r["sentence1"] for r in rows], batch)
        b = embed(model, tokenizer, [r["sentence2"] for r in rows], batch)
        cos, gold = (a * b).sum(-1).tolist(), [float(r["score"]) for r in rows]
        metrics = {"spearman": float(spearmanr(cos, gold).statistic), "pearson": float(pearsonr(cos, gold).statistic)}
    else:
        queries = embed(model, tokenizer, [r["query"] for r in rows], batch)
        docs = embed(model, tokenizer, [r["positive"] for r in rows], batch)
        scores = queries @ docs.T  # (queries, docs) cosine; query i's positive is doc i
        ranks = (scores > scores.diagonal()[:, None]).sum(-1)  # docs scored above the positive
        hits1, hits5 = [int(r) == 0 for r in ranks], [int(r) < 5 for r in ranks]
        metrics = {"recall@1": sum(hits1) / len(rows), "recall@1_stderr": stderr(hits1),
                   "recall@5": sum(hits5) / len(rows), "recall@5_stderr": stderr(hits5),
                   "mrr@10": sum(1 / (int(r) + 1) for r in ranks if r < 10) / len(rows)}
    metrics["samples"] = len(rows)
    return {"results": {data.stem: metrics}, "higher_is_better": {data.stem: {m: True for m in values(metrics)}},
            "kind": kind, "params": sum(p.numel() for p in model.parameters()), "settings": settings}


def _probe(x, labels: list[str]) -> tuple[dict[str, Any], int]:
    """(out-of-fold accuracy of a logistic-regression probe, folds): stratified folds, fewer when a class is small."""
    from collections import Counter

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    smallest = min(Counter(labels).values())
    if len(set(labels)) < 2 or smallest < 2:
        raise ArchsmithError("data", "classification needs at least 2 labels with at least 2 rows each")
    folds = StratifiedKFold(n_splits=min(FOLDS, smallest), shuffle=True, random_state=0)
    predicted = cross_val_predict(LogisticRegression(max_iter=1000), x, labels, cv=folds)
    hits = [p == t for p, t in zip(predicted, labels)]
    return {"acc": sum(hits) / len(hits), "acc_stderr": stderr(hits)}, folds.get_n_splits()
