"""Students from a teacher: the ml-architecture-designer's v1 (depth and width) and v2 (cheaper operations).

- text.py: BERT-style encoders and Llama-layout decoders (transformers configs; tokenizer, calibration text);
- any_module.py: any other `nn.Module` (file.py:factory, transformers vision models, ...) through modules.py
  (size knobs or torch-pruning), symmetry.py (permutation / rotation, proven) and rewrites.py (v2);
- student.py: the student directory and `load_student`, for compress and distill outputs alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from archsmith.compress.student import load_student
from archsmith.errors import ArchsmithError

__all__ = ["compress", "load_student", "is_text_model"]


def is_text_model(model: str | Path) -> bool:
    """A token model for text.py: a model directory whose config has a vocabulary, or a Hub id."""
    import json

    from archsmith.analyze import FACTORY

    text = str(model)
    if FACTORY.match(text):
        return False
    path = Path(text)
    if path.is_dir() and (path / "config.json").is_file():
        try:
            return "vocab_size" in json.loads((path / "config.json").read_text())
        except ValueError:
            return True  # text.py names the broken file
    return True


def compress(model: str | Path, reduction: float, out: str | Path, strategy: str = "both", v2: bool = False, *,
             kv_heads: int | None = None, calibration: str | Path | None = None, heldout: str | Path | None = None,
             inputs: str | None = None, data: str | None = None, invariance: list[str] | None = None,
             route: str = "auto", allow_code: bool = True, overwrite: bool = False,
             progress: Callable[[str], None] | None = None, eval_tasks: list[str] = (), eval_include: list[str | Path] = (),
             eval_limit: int | None = None, eval_data: str | Path | None = None, **measuring) -> dict[str, Any]:
    """A student of `model` in `out` (see the package docstring for which path takes it); returns its report.

    `measuring`: text models take `grid` and `repeats` (latency table), other modules `repeats`. `eval_*`: task
    metrics of teacher and student (`archsmith.quality`: harness tasks for decoders, `eval_data` for encoders) in
    the report's `quality`.
    """
    if eval_tasks or eval_data:
        check_quality(model, eval_tasks, eval_include, eval_data, allow_code)
        report = compress(model, reduction, out, strategy, v2, kv_heads=kv_heads, calibration=calibration, heldout=heldout,
                          inputs=inputs, data=data, invariance=invariance, route=route, allow_code=allow_code,
                          overwrite=overwrite, progress=progress, **measuring)
        return {**report, "quality": quality_of(model, out, eval_tasks, eval_include, eval_limit, eval_data, allow_code)}
    if is_text_model(model):
        for name, value in (("inputs", inputs), ("data", data), ("invariance", invariance or None),
                            ("route", None if route == "auto" else route)):
            if value is not None:
                raise ArchsmithError(name, "applies to students of any nn.Module (file.py:factory or a model directory "
                                           "without a vocabulary); text models calibrate on text (--calibration)")
        from archsmith.compress import text

        return text.compress(model, reduction, out, strategy, v2, kv_heads, calibration, heldout,
                             overwrite=overwrite, progress=progress, **measuring)
    for name, value in (("kv_heads", kv_heads), ("calibration", calibration), ("heldout", heldout)):
        if value is not None:
            raise ArchsmithError(name, "applies to text models (BERT-style encoders, Llama-layout decoders); "
                                       "other modules take --inputs and --data")
    from archsmith.compress.any_module import compress_module

    return compress_module(str(model), reduction, out, strategy, v2, inputs, data, invariance, route, allow_code,
                           overwrite=overwrite, progress=progress, **measuring)


def check_quality(teacher: str | Path, tasks: list[str], include: list[str | Path], data: str | Path | None,
                  allow_code: bool) -> None:
    """Refuse task metrics that cannot run on this teacher before any work."""
    from archsmith.quality import check_measure

    if not is_text_model(teacher) or not Path(str(teacher)).is_dir():
        raise ArchsmithError("eval_tasks", "task metrics need a text model directory (harness tasks for decoders, "
                                           "--eval-data for encoders)")
    check_measure(list(tasks), list(include), data, allow_code)


def quality_of(teacher: str | Path, student: str | Path, tasks: list[str], include: list[str | Path], limit: int | None,
               data: str | Path | None, allow_code: bool) -> dict[str, Any]:
    """Teacher and student measured alike: harness `tasks` (decoders) or encoder metrics on `data`."""
    from archsmith.quality import side_by_side

    return side_by_side(str(teacher), str(student), tasks=list(tasks), include=list(include), data=data, limit=limit,
                        allow_code=allow_code)
