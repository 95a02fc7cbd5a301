"""A student directory: what `compress` writes for any `nn.Module`, and `load_student` for every kind of student.

Files: `model.safetensors` (the student's state dict), `student.json` (how to rebuild it: the teacher's source, and
the knobs, or the dropped blocks, changed attributes and tensor shapes of a pruned module), `inputs.safetensors`
(the example batch), `student_v1.py` / `student_v2.py` (the same rebuild as Python a user keeps: `build()`),
`student_report.md`, `compression.json` and `comparison.png`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archsmith.compress.modules import Source, apply_structure
from archsmith.errors import ArchsmithError

FORMAT = 1  # student.json's layout
TUPLE_KEY = "__position_{}"  # inputs.safetensors keys of a tuple batch


def structure_record(source: Source, route: str, knobs: dict | None, removed: list, attributes: dict,
                     example: dict | tuple, version: str, rewrites: list[dict]) -> dict[str, Any]:
    return {"format": FORMAT, "version": version, "route": route, "source": source.as_dict(), "knobs": knobs,
            "rewrites": rewrites, "removed": [list(b) for b in removed], "attributes": attributes,
            "inputs": list(example) if isinstance(example, dict) else len(example)}


def save_inputs(example: dict | tuple):
    """inputs.safetensors writer for the example batch."""
    return tensors_writer(example if isinstance(example, dict) else {TUPLE_KEY.format(i): t for i, t in enumerate(example)})


def load_inputs(directory: str | Path) -> dict | tuple:
    """The example batch a student directory carries (dict, or tuple when the teacher takes positional inputs)."""
    from safetensors.torch import load_file

    record = json.loads((Path(directory) / "student.json").read_text())
    tensors = load_file(str(Path(directory) / "inputs.safetensors"))
    if isinstance(record["inputs"], list):
        return {k: tensors[k] for k in record["inputs"]}
    return tuple(tensors[TUPLE_KEY.format(i)] for i in range(record["inputs"]))


def tensors_writer(tensors: dict):
    """A safetensors file writer for named tensors (a state dict, a batch), each tensor copied: safetensors refuses
    tensors that share storage."""
    def write(path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(path))

    return write


def replace(module, applied: list[dict]) -> None:
    """Apply the v2 rewrites recorded as [{"name": row, "sites": [module names]}] to a freshly built teacher."""
    from archsmith.compress.rewrites import REWRITES, replace_at

    rows = {row.name: row for row in REWRITES}
    for entry in applied:
        replace_at(module, rows[entry["name"]], entry["sites"])


def rebuild(record: dict[str, Any], weights: dict, allow_code: bool = True) -> Any:
    """The student module of a student.json record, with `weights` (a state dict) loaded, in eval mode."""
    source = Source(record["source"]["kind"], record["source"]["ref"], record["source"].get("knobs", {}))
    if record["route"] == "knobs":
        module, _ = source.build(record["knobs"], allow_code=allow_code)
    else:
        module, _ = source.build(allow_code=allow_code)
        replace(module, record["rewrites"])
        apply_structure(module, record["removed"], record["attributes"], {k: list(v.shape) for k, v in weights.items()})
    module.load_state_dict(weights, strict=True)
    return module.eval()


def student_code(record: dict[str, Any], summary: str) -> str:
    """student_v1.py / student_v2.py: `build()` returns the student with its weights. Values are literals."""
    head = (f'"""The student archsmith compress wrote in this directory: {summary}.\n\n'
            'build() returns it (an nn.Module with model.safetensors loaded, eval mode)."""\n\n'
            "from pathlib import Path\n\nfrom safetensors.torch import load_file\n\n"
            "HERE = Path(__file__).resolve().parent\n")
    if record["route"] == "knobs":
        file, name = record["source"]["ref"].rsplit(":", 1)
        return head + (
            f"FACTORY = {file!r}  # the teacher's code\nNAME = {name!r}\nKNOBS = {record['knobs']!r}  # the student's size\n\n\n"
            "def build():\n"
            "    import importlib.util\n\n"
            '    spec = importlib.util.spec_from_file_location("teacher_code", FACTORY)\n'
            "    code = importlib.util.module_from_spec(spec)\n"
            "    spec.loader.exec_module(code)\n"
            "    made = getattr(code, NAME)(**KNOBS)\n"
            "    module = made[0] if isinstance(made, tuple) else made\n"
            '    module.load_state_dict(load_file(str(HERE / "model.safetensors")))\n'
            "    return module.eval()\n")
    return head + (
        f"SOURCE = {record['source']!r}  # the teacher's architecture\n"
        f"REWRITES = {record['rewrites']!r}  # v2 operation rewrites (archsmith.compress.rewrites)\n"
        f"REMOVED = {record['removed']!r}  # (container, index) of the blocks dropped\n"
        f"ATTRIBUTES = {record['attributes']!r}  # module attributes pruning changed\n\n\n"
        "def build():\n"
        "    from archsmith.compress.modules import Source, apply_structure\n"
        "    from archsmith.compress.student import replace\n\n"
        "    module, _ = Source(**SOURCE).build()\n"
        "    replace(module, REWRITES)\n"
        '    weights = load_file(str(HERE / "model.safetensors"))\n'
        "    apply_structure(module, REMOVED, ATTRIBUTES, {k: list(v.shape) for k, v in weights.items()})\n"
        "    module.load_state_dict(weights)\n"
        "    return module.eval()\n")


def check_record(record: Any, path: Path) -> dict[str, Any]:
    """student.json is data: its layout is checked before anything is built from it."""
    source = record.get("source") if isinstance(record, dict) else None
    ok = (isinstance(source, dict) and source.get("kind") in ("factory", "transformers") and isinstance(source.get("ref"), str)
          and isinstance(source.get("knobs", {}), dict) and record.get("route") in ("knobs", "prune")
          and isinstance(record.get("removed", []), list) and isinstance(record.get("attributes", {}), dict)
          and isinstance(record.get("rewrites", []), list))
    if not ok:
        raise ArchsmithError("directory", f"{path} is not a student.json archsmith wrote (source, route, removed, attributes)")
    if record.get("format") != FORMAT:
        raise ArchsmithError("directory", f"{path} has format {record.get('format')!r}; this archsmith reads {FORMAT}")
    return record


def load_student(directory: str | Path, allow_code: bool = True):
    """The student `nn.Module` with its weights, from a `compress` or a `distill` output directory.

    Any-module students rebuild from student.json (a factory's student runs the factory's code: refused unless
    `allow_code`); text students (config.json) load with transformers' AutoModel / AutoModelForCausalLM; a
    distill directory gives its `final/` student.
    """
    import torch

    path = Path(directory)
    if (path / "final").is_dir() and not (path / "student.json").is_file() and not (path / "config.json").is_file():
        path = path / "final"
    if (path / "student.json").is_file():
        from safetensors.torch import load_file

        try:
            record = json.loads((path / "student.json").read_text())
        except ValueError as exc:
            raise ArchsmithError("directory", f"{path / 'student.json'} is not JSON: {exc}") from None
        check_record(record, path / "student.json")
        return rebuild(record, load_file(str(path / "model.safetensors")), allow_code)
    if (path / "config.json").is_file():
        import transformers

        from archsmith.analyze import quiet_transformers

        quiet_transformers()
        loads_with = "AutoModel"
        if (path / "compression.json").is_file():
            loads_with = json.loads((path / "compression.json").read_text()).get("loads_with", loads_with)
        elif json.loads((path / "config.json").read_text()).get("architectures", [""])[0].endswith("ForCausalLM"):
            loads_with = "AutoModelForCausalLM"
        cls = getattr(transformers, loads_with)
        return cls.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()
    raise ArchsmithError("directory", f"{directory} holds no student (student.json or config.json, or final/ of a distill run)")
