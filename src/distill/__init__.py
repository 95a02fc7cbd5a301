"""Distillation: a student learns to behave like its teacher, on the loop of `archsmith train`.

- text.py: text models (BERT-style encoders, causal LMs) on a text corpus: soft targets, hidden states, attention;
- modules.py: any teacher / student pair of nn.Modules (the student a `compress` directory) on batches from
  `file.py:fn`: output matching (relative squared error, or KL for logits) plus block features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archsmith.distill.text import ALPHA, HIDDEN_WEIGHT, LR, SENTENCES, TEMPERATURE
from archsmith.errors import ArchsmithError

__all__ = ["ALPHA", "HIDDEN_WEIGHT", "LR", "SENTENCES", "TEMPERATURE", "distill", "is_module_student"]


def is_module_student(student: str | Path) -> bool:
    """A compress output for any nn.Module (student.json), as opposed to a text model directory."""
    return (Path(student) / "student.json").is_file()


def distill(teacher: str | Path, student: str | Path, data, out: str | Path, **options) -> dict[str, Any]:
    """Distil `teacher` into `student`: text models on a corpus (`data`: files), other modules on batches
    (`data`: file.py:fn). Options are those of text.distill or modules.distill_module."""
    if is_module_student(student):
        from archsmith.distill.modules import distill_module

        if isinstance(data, (list, tuple)):
            if len(data) != 1:
                raise ArchsmithError("data", f"a student of any nn.Module takes one --data file.py:fn; got {len(data)}")
            data = data[0]
        return distill_module(str(teacher), student, None if data is None else str(data), out, **options)
    from archsmith.distill.text import distill as distill_text

    return distill_text(teacher, student, data, out, **options)

