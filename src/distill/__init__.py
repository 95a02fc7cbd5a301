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


def distill(teacher: str | Path, student: str | Path, data, out: str | Path, eval_tasks: list[str] = (),
            eval_include: list[str | Path] = (), eval_limit: int | None = None, eval_data: str | Path | None = None,
            allow_code: bool = True, **options) -> dict[str, Any]:
    """Distil `teacher` into `student`: text models on a corpus (`data`: files), other modules on batches
    (`data`: file.py:fn). Options are those of text.distill or modules.distill_module. `eval_*`: task metrics of
    the teacher and the distilled student (`archsmith.quality`) in the report's `quality`."""
    if eval_tasks or eval_data:
        from archsmith.compress import check_quality, quality_of

        check_quality(teacher, eval_tasks, eval_include, eval_data, allow_code)
        report = distill(teacher, student, data, out, allow_code=allow_code, **options)
        return {**report, "quality": quality_of(teacher, out, eval_tasks, eval_include, eval_limit, eval_data, allow_code)}
    if is_module_student(student):
        from archsmith.distill.modules import distill_module

        if isinstance(data, (list, tuple)):
            if len(data) != 1:
                raise ArchsmithError("data", f"a student of any nn.Module takes one --data file.py:fn; got {len(data)}")
            data = data[0]
        return distill_module(str(teacher), student, None if data is None else str(data), out, allow_code=allow_code, **options)
    from archsmith.distill.text import distill as distill_text

    return distill_text(teacher, student, data, out, **options)

