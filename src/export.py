"""Export with proof: torch.export (.pt2), ONNX (torch.export-based exporter) or TorchScript, validated.

Every artifact is reloaded and run against the eager model at several batch sizes and lengths (text
models; the example inputs and fresh ones of the same shapes for `file.py:factory` models); the max
absolute difference must stay within TOLERANCE, or nothing is written. ONNX runs through onnxruntime;
`quantize="int8"` adds onnxruntime's dynamic int8 quantisation with its accuracy delta. Files are made
in a temporary directory, validated, then moved into `out` at once (`archsmith.files.write_files`).

Shapes are dynamic by default (text models: batch and sequence; factories: every dimension torch.export finds free);
`static=True` fixes them at the example's. When a dynamic export differs from eager, it is exported again with fixed
shapes and with each input's dimensions fixed in turn, and the error names the input whose dynamic dimensions break
it (and the input whose new values show it) and offers `--static`: a wrong file is never written.

TorchScript (`torch.jit.trace`) still runs in torch 2.13 but is deprecated upstream; prefer pt2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import io
import json
import logging
import os
import re
import shutil
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch  # this module is imported only by the commands that export, never at CLI or server start-up

from archsmith.errors import ArchsmithError

FORMATS = ("onnx", "pt2", "torchscript")
QUANTIZE = ("int8",)
FILE_NAMES = {"onnx": "model.onnx", "pt2": "model.pt2", "torchscript": "model.torchscript.pt"}
TOLERANCE = 1e-4  # fp32 max |exported - eager|, relative to max(1, largest |eager output|)
VALIDATION_GRID = ((1, 8), (2, 16), (4, 37))  # (batch, seq) text-model checks; 37: not a power of two
EXAMPLE = (2, 16)  # export example (batch >= 2: a batch-1 example fixes the batch dimension at 1)
LATENCY_GRID = ((1, 128), (8, 128))  # (batch, seq) points of the latency table
EXTERNAL_DATA_ABOVE = 1 << 30  # ONNX weights above 1 GiB go to model.onnx.data (protobuf's 2 GiB limit)
MAX_DIM = 1 << 16  # upper bound of dynamic batch / sequence dimensions


@dataclass
class Exportable:
    """A module whose forward takes tensors positionally and returns one tensor."""

    module: Any
    names: list[str]  # input names, in order
    example: tuple
    dynamic: Any  # dynamic_shapes for torch.export
    cases: list[tuple[str, tuple]]  # (label, inputs) the artifact is checked on
    latency_cases: list[tuple[str, tuple]]
    masks: list[Any | None]  # per case: attention mask selecting the positions compared (None: all)
    output: str
    name: str
    labels: list[str] = dataclasses.field(default_factory=list)  # per input, for messages: "input_1 (batch)"
    example_mask: Any = None  # the example's attention mask (text models): the positions compared at the example shape

    def label(self, i: int) -> str:
        return self.labels[i] if i < len(self.labels) else self.names[i]


class Mismatch(ArchsmithError):
    """Validation found the artifact different from eager (or failing) on case `case` (an index into `cases`)."""

    def __init__(self, field: str, message: str, case: int):
        super().__init__(field, message)
        self.case = case


def _argument_labels(module, names: list[str]) -> list[str]:
    """"input_1 (batch)": the ONNX input name and the forward's parameter it feeds, where the signature says."""
    try:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [f"{name} ({params[i]})" if i < len(params) and params[i] != name else name for i, name in enumerate(names)]


def static_shapes(ex: Exportable) -> Exportable:
    """`ex` with fixed shapes (the example's): checked on the cases of the example's shapes, timed at that shape."""
    shapes = [tuple(t.shape) for t in ex.example]
    same = [(case, mask) for case, mask in zip(ex.cases, ex.masks) if [tuple(t.shape) for t in case[1]] == shapes]
    if not same:
        same = [(("example inputs", ex.example), ex.example_mask)]
    label = ", ".join("x".join(map(str, shape)) for shape in shapes)
    return dataclasses.replace(ex, dynamic=None, cases=[c for c, _ in same], masks=[m for _, m in same],
                               latency_cases=[(f"fixed shapes {label}", ex.example)])


def _one_input_fixed(ex: Exportable, i: int) -> Exportable:
    """`ex` with input i's dimensions fixed, the others as dynamic as before (checked on the same-shape cases)."""
    fixed = static_shapes(ex)
    dynamic = list(ex.dynamic)
    if len(dynamic) == len(ex.names):  # one entry per input
        dynamic[i] = None
    else:  # forward(*tensors): one group holding every input's entry
        group = list(dynamic[0])
        group[i] = None
        dynamic[0] = tuple(group)
    return dataclasses.replace(fixed, dynamic=tuple(dynamic))


class TextModel(torch.nn.Module):
    """A transformers model as forward(input_ids, attention_mask) -> last_hidden_state (encoders) or logits (LMs)."""

    def __init__(self, model, causal: bool):
        super().__init__()
        self.model = model
        self.causal = causal

    def forward(self, input_ids, attention_mask):
        extra = {"use_cache": False} if self.causal else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return out.logits if self.causal else out.last_hidden_state


def _text_inputs(vocab: int, batch: int, seq: int, pad: bool, seed: int) -> tuple:
    """(input_ids, attention_mask); with `pad`, row 0 is right-padded over its last quarter."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    if pad and batch > 1:
        mask[0, seq - max(1, seq // 4):] = 0
    return ids, mask


def load_exportable(model: str, allow_code: bool = True, latency_grid=LATENCY_GRID, static: bool = False) -> Exportable:
    """An HF model directory with safetensors weights, or `file.py:factory` (CLI: runs the user's code); `static`
    fixes the shapes at the example's."""
    ex = _load_exportable(model, allow_code, latency_grid)
    return static_shapes(ex) if static else ex


def _load_exportable(model: str, allow_code: bool, latency_grid) -> Exportable:
    from archsmith.analyze import FACTORY, hf_class, load

    if FACTORY.match(model or ""):
        target = load(model, allow_code=allow_code)
        if target.kwargs:
            raise ArchsmithError("model", "export takes positional example inputs: return (module, (tensor, ...)) from the factory")
        if target.meta:
            raise ArchsmithError("model", "the factory built the model on the meta device; export needs real weights")
        example = tuple(target.args)
        if not example or not all(isinstance(t, torch.Tensor) for t in example):
            raise ArchsmithError("model", "example inputs must be tensors")
        fresh = tuple(torch.randn_like(t) if t.dtype.is_floating_point else
                      torch.randint(int(t.min()), int(t.max()) + 1, t.shape, dtype=t.dtype) for t in example)
        names = [f"input_{i}" for i in range(len(example))]
        dynamic = tuple({d: torch.export.Dim.AUTO for d in range(t.dim())} for t in example)
        cases = [("example inputs", example), ("fresh inputs, same shapes", fresh)]
        return Exportable(target.module.eval(), names, example, dynamic, cases, cases[:1], [None, None], "output", target.name,
                          _argument_labels(target.module, names))
    path = Path(model)
    if (path / "student.json").is_file():
        return _student_exportable(path, allow_code)
    if not path.is_dir() or not any(path.glob("*.safetensors")):
        raise ArchsmithError("model", f"must be a model directory with config.json and safetensors weights, or file.py:factory; got {model!r:.120}")
    from archsmith.hfconfig import read_config

    cfg = read_config(path)
    cls = hf_class(cfg)
    try:
        hf = cls.from_pretrained(path, dtype=torch.float32, use_safetensors=True, attn_implementation="sdpa")
    except (OSError, ValueError, KeyError) as exc:
        raise ArchsmithError("model", f"transformers cannot load {path}: {str(exc)[:200]}") from None
    causal = cls.__name__.endswith("ForCausalLM")
    vocab = hf.config.vocab_size
    context = getattr(hf.config, "max_position_embeddings", None) or 512
    seq_dim = torch.export.Dim("seq", min=2, max=min(context, MAX_DIM))
    batch_dim = torch.export.Dim("batch", min=1, max=MAX_DIM)
    dynamic = ({0: batch_dim, 1: seq_dim}, {0: batch_dim, 1: seq_dim})
    cases, masks = [], []
    for i, (b, s) in enumerate(VALIDATION_GRID):
        s = min(s, context)
        inputs = _text_inputs(vocab, b, s, pad=True, seed=i)
        cases.append((f"batch {b}, seq {s}" + (" (row 0 right-padded)" if b > 1 else ""), inputs))
        masks.append(inputs[1])
    latency = [(f"batch {b}, seq {min(s, context)}", _text_inputs(vocab, b, min(s, context), pad=False, seed=99)) for b, s in latency_grid]
    example = _text_inputs(vocab, *EXAMPLE, pad=True, seed=7)
    return Exportable(TextModel(hf, causal).eval(), ["input_ids", "attention_mask"], example, dynamic, cases, latency, masks,
                      "logits" if causal else "last_hidden_state", str(model), example_mask=example[1])


class Positional(torch.nn.Module):
    """A module taking a batch (dict: by `names`; else positional) as forward(*tensors), for the exporters."""

    def __init__(self, module, names: list[str] | None):
        super().__init__()
        self.module, self.names = module, names

    def forward(self, *tensors):
        return self.module(**dict(zip(self.names, tensors))) if self.names else self.module(*tensors)


def _student_exportable(path: Path, allow_code: bool) -> Exportable:
    """A compress student of any nn.Module: load_student, checked on its example batch and a redrawn one."""
    from archsmith.compress.modules import variant
    from archsmith.compress.student import load_inputs, load_student

    module, example = load_student(path, allow_code), load_inputs(path)
    names = list(example) if isinstance(example, dict) else [f"input_{i}" for i in range(len(example))]
    module = Positional(module, names if isinstance(example, dict) else None)
    args = tuple(example.values()) if isinstance(example, dict) else tuple(example)
    fresh = variant(args, seed=1)
    dynamic = (tuple({d: torch.export.Dim.AUTO for d in range(t.dim())} for t in args),)  # forward(*tensors): one group
    cases = [("example inputs", args), ("fresh inputs, same shapes", fresh)]
    labels = names if isinstance(example, dict) else _argument_labels(module.module, names)
    return Exportable(module.eval(), names, args, dynamic, cases, cases[:1], [None, None], "output", str(path), labels)


# ---- one artifact per format ----------------------------------------------------------------------

@contextlib.contextmanager
def quiet():
    """Keep torch / onnxruntime chatter (warnings, logs, partial graphs printed to stderr) off the user's terminal."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def _torch_export(ex: Exportable):
    try:
        with quiet():
            return torch.export.export(ex.module, ex.example, dynamic_shapes=ex.dynamic)
    except Exception as exc:  # data-dependent control flow, unsupported Python: say what and where
        raise ArchsmithError("model", f"torch.export cannot capture {ex.name}: {_first_line(exc)}{_user_frame(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _user_frame(exc: BaseException) -> str:
    """' (at file:line)' of the innermost frame outside torch and transformers, if any."""
    engine = Path(__file__).resolve().parent
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "site-packages" not in f.filename and not Path(f.filename).resolve().is_relative_to(engine)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _where(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    module = list(stack.values())[-1] if stack else ("", "")
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    line = next((l.strip() for l in reversed(trace) if l.strip().startswith("File ")), "")
    return f"module '{module[0] or '(root)'}' ({str(module[1]).rsplit('.', 1)[-1]})" + (f", {line}" if line else "")


@functools.cache
def _onnx_registry(torchvision_loaded: bool):
    """torchlib's ONNX translations of the ops loaded now (about a second to build: built once per process, again once
    torchvision, whose ops it skips until they exist, is imported)."""
    from torch.onnx._internal.exporter import _registration

    with quiet():  # it warns about every torchvision op it skips
        return _registration.ONNXRegistry.from_torchlib()


def unsupported_onnx_ops(program) -> list[str]:
    """Ops of a torch.export program that no ONNX translation covers, each with where it is called."""
    import sys

    registry = _onnx_registry("torchvision" in sys.modules)
    missing = []
    for node in program.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        if target.namespace in ("aten", "prims") or registry.is_registered(target):
            continue  # aten ops are translated or decomposed by the exporter itself
        missing.append(f"{target.name()} in {_where(node)}")
    return missing


def _export_onnx(ex: Exportable, directory: Path) -> Path:
    program = _torch_export(ex)
    missing = unsupported_onnx_ops(program)
    if missing:
        raise ArchsmithError("format", f"ONNX has no translation for {'; '.join(missing[:3])}; --format pt2 keeps it, "
                                       "or register an ONNX function for the op")
    path = directory / FILE_NAMES["onnx"]
    big = sum(p.numel() * p.element_size() for p in ex.module.parameters()) > EXTERNAL_DATA_ABOVE
    try:
        with quiet():
            torch.onnx.export(program, ex.example, str(path), input_names=ex.names, output_names=[ex.output],
                              external_data=big, verbose=False)
    except Exception as exc:
        op = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)'", str(exc))
        what = f"no ONNX translation for {op.group(1)}" if op else _first_line(exc)
        raise ArchsmithError("format", f"ONNX export of {ex.name} failed: {what}") from None
    return path


def _ort_session(path: Path):
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads eager torch uses: a fair comparison
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_runner(session, names: list[str]) -> Callable:
    def run(*inputs):
        feed = {name: t.numpy() for name, t in zip(names, inputs)}
        return torch.from_numpy(session.run(None, feed)[0])

    return run


def _compare(reference, output, mask) -> dict[str, float]:
    """Max / mean |diff| and mean cosine over positions where `mask` is 1 (all when None)."""
    ref, out = reference.float(), output.float()
    if mask is not None and ref.dim() >= 3:
        keep = mask.bool()
        ref, out = ref[keep], out[keep]
    diff = (ref - out).abs()
    rows = (lambda t: t.reshape(t.shape[0], -1)) if ref.dim() > 1 else (lambda t: t.reshape(1, -1))
    cos = torch.nn.functional.cosine_similarity(rows(ref), rows(out), dim=-1)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "cosine": round(float(cos.mean()), 6),
            "scale": float(ref.abs().max())}


def validate(ex: Exportable, run: Callable, tolerance: float | None) -> list[dict[str, Any]]:
    """Run `run` on every case against eager; raise (nothing written) when a difference exceeds `tolerance`."""
    rows = []
    for i, ((label, inputs), mask) in enumerate(zip(ex.cases, ex.masks)):
        row = _check(ex, run, inputs, mask, tolerance)
        if "failure" in row:
            raise Mismatch("validation", f"{'the exported model fails on ' if row['failure'] == 'fails' else ''}{label}: "
                                         f"{row['detail']}; nothing written", i)
        rows.append({"case": label, **row})
    return rows


def _check(ex: Exportable, run: Callable, inputs: tuple, mask, tolerance: float | None) -> dict[str, Any]:
    """One comparison of `run` against eager: the row, with `failure` and `detail` when it fails."""
    with torch.no_grad():
        reference = ex.module(*inputs)
        try:
            output = run(*inputs)
        except Exception as exc:
            return {"failure": "fails", "detail": _first_line(exc)}
    if tuple(output.shape) != tuple(reference.shape):
        return {"failure": "shape", "detail": f"exported output shape {tuple(output.shape)} != eager {tuple(reference.shape)}"}
    row = {"shapes": [list(t.shape) for t in inputs], **_compare(reference, output, mask)}
    if tolerance is not None:
        row["tolerance"] = tolerance * max(1.0, row["scale"])
        row["ok"] = row["max_abs_diff"] <= row["tolerance"]
        if not row["ok"]:
            row.update(failure="diff", detail=f"max |exported - eager| = {row['max_abs_diff']:.3g} exceeds {row['tolerance']:.3g}")
    return row


def _new_values(ex: Exportable, run: Callable, case: int) -> list[int]:
    """Inputs that show a same-shape failure on their own: the example with only that input taken from the case."""
    inputs = ex.cases[case][1]
    if [t.shape for t in inputs] != [t.shape for t in ex.example]:
        return []
    return [i for i in range(len(inputs))
            if "failure" in _check(ex, run, ex.example[:i] + (inputs[i],) + ex.example[i + 1:], ex.masks[case], TOLERANCE)]


def _artifact(ex: Exportable, fmt: str, directory: Path, report: dict[str, Any], notes: list[str]) -> tuple[str, Callable, Path]:
    """Export `ex` to `fmt` in `directory` and load it back: (runner name, runner, file)."""
    if fmt == "pt2":
        program = _torch_export(ex)
        path = directory / FILE_NAMES["pt2"]
        torch.export.save(program, str(path))
        return "torch.export (.pt2)", torch.export.load(str(path)).module(), path
    if fmt == "torchscript":
        notes.append("TorchScript is deprecated upstream (torch.jit); prefer --format pt2 (torch.export)")
        with quiet():
            try:
                traced = torch.jit.trace(ex.module, ex.example, check_trace=False, strict=False)
            except Exception as exc:
                raise ArchsmithError("model", f"torch.jit.trace cannot trace {ex.name}: {_first_line(exc)}{_user_frame(exc)}") from None
            path = directory / FILE_NAMES["torchscript"]
            torch.jit.save(traced, str(path))
            return "TorchScript", torch.jit.load(str(path)), path
    import onnx
    import onnxruntime

    path = _export_onnx(ex, directory)
    onnx.checker.check_model(str(path))
    report["onnx"] = {"opset": onnx.load(str(path), load_external_data=False).opset_import[0].version,
                      "onnxruntime": onnxruntime.__version__}
    return "onnxruntime", _ort_runner(_ort_session(path), ex.names), path


def diagnose_dynamic(ex: Exportable, fmt: str, failure: Mismatch, run: Callable) -> ArchsmithError:
    """The error for a dynamic-shape export that failed validation: re-exported with fixed shapes, and with each
    input's dimensions fixed in turn, it names the input whose dynamic dimensions break the export and offers
    fixed shapes; when fixed shapes fail too, it says the shapes are not the cause. Writes nothing."""
    said = str(failure).removeprefix("validation: ").removesuffix("; nothing written")
    shown = _new_values(ex, run, failure.case)
    values = f" (it shows when {_names(ex, shown)} take{'s' if len(shown) == 1 else ''} new values)" if shown else ""
    fixed = static_shapes(ex)
    with tempfile.TemporaryDirectory(prefix="archsmith-export-check-") as tmp:
        try:
            rows = validate(fixed, _artifact(fixed, fmt, Path(tmp), {}, [])[1], TOLERANCE)
        except ArchsmithError as exc:
            return ArchsmithError("validation", f"{said}{values}; fixed shapes fail too ({str(exc).split(': ', 1)[-1].removesuffix('; nothing written')}), "
                                                "so dynamic shapes are not the cause; nothing written")
        breaking = []
        for i in range(len(ex.names)) if len(ex.names) > 1 else ():
            one = _one_input_fixed(ex, i)
            directory = Path(tmp) / f"input_{i}"
            directory.mkdir()
            try:
                validate(one, _artifact(one, fmt, directory, {}, [])[1], TOLERANCE)
                breaking.append(i)
            except ArchsmithError:
                continue
    worst = max(r["max_abs_diff"] for r in rows)
    culprit = (f"the dynamic dimensions of {_names(ex, breaking)} break it" if breaking else
               "no one input's dynamic dimensions are to blame alone" if len(ex.names) > 1 else "its dynamic dimensions break it")
    shapes = ", ".join(f"{ex.label(i)} {'x'.join(map(str, t.shape))}" for i, t in enumerate(ex.example))
    return ArchsmithError("static", f"with dynamic shapes, {said}{values}; with fixed shapes ({shapes}) the export matches eager "
                                    f"(max |diff| {worst:.3g}): {culprit}. Export with fixed shapes (--static; MCP static: true) "
                                    "and feed exactly those shapes, or change the model so that it computes the same for any "
                                    "size; nothing written")


def _names(ex: Exportable, inputs: list[int]) -> str:
    return " and ".join(ex.label(i) for i in inputs)


def export(model: str, fmt: str, out: str | Path, quantize: str | None = None, allow_code: bool = True,
           overwrite: bool = False, repeats: int = 5, latency_grid=LATENCY_GRID,
           progress: Callable[[str], None] | None = None, static: bool = False) -> dict[str, Any]:
    """Export `model` to `fmt`, validate it (and its int8 twin), time it, write it to `out`; returns the report.

    `static`: fixed shapes (the example's) instead of dynamic batch / sequence / free dimensions."""
    from archsmith.analyze import median_ms
    from archsmith.files import check_out_dir, write_files

    say = progress or (lambda message: None)
    if fmt not in FORMATS:
        raise ArchsmithError("format", f"must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ArchsmithError("quantize", f"must be one of {', '.join(QUANTIZE)}; got {quantize!r}")
    if quantize and fmt != "onnx":
        raise ArchsmithError("quantize", "int8 applies to --format onnx (onnxruntime's dynamic quantiser)")
    if not isinstance(repeats, int) or not 1 <= repeats <= 1000:
        raise ArchsmithError("repeats", f"must be an integer in [1, 1000], got {repeats!r}")
    check_out_dir(out, overwrite)
    say(f"loading {model}")
    ex = load_exportable(model, allow_code, latency_grid, static=static)
    notes: list[str] = []
    runners: dict[str, Callable] = {"eager": lambda *x: ex.module(*x)}
    report: dict[str, Any] = {"model": str(model), "format": fmt, "inputs": ex.names, "output": ex.output,
                              "shapes": "traced" if fmt == "torchscript" else "fixed" if ex.dynamic is None else "dynamic",
                              "torch": torch.__version__, "tolerance": f"{TOLERANCE:g} x max(1, max |eager output|), fp32"}
    if static:
        report["input_shapes"] = {name: list(t.shape) for name, t in zip(ex.names, ex.example)}
        notes.append("fixed shapes: the exported model takes exactly " +
                     ", ".join(f"{ex.label(i)} {'x'.join(map(str, t.shape))}" for i, t in enumerate(ex.example)))
    with tempfile.TemporaryDirectory(prefix="archsmith-export-") as tmp:
        staging = Path(tmp)
        say(f"exporting to {fmt}")
        exported_label, runner, path = _artifact(ex, fmt, staging, report, notes)
        runners[exported_label] = runner
        say("validating against eager")
        try:
            report["validation"] = validate(ex, runner, TOLERANCE)
        except Mismatch as failure:
            if report["shapes"] != "dynamic":
                raise
            say("re-checking with fixed shapes")
            raise diagnose_dynamic(ex, fmt, failure, runner) from None
        if quantize:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            say("int8 dynamic quantisation")
            qpath = staging / "model.int8.onnx"
            with tempfile.TemporaryDirectory(prefix="archsmith-quant-") as work:
                # the exporter's value_info can disagree with onnx shape inference, which the quantiser reruns
                graph = onnx.load(str(path))
                del graph.graph.value_info[:]
                plain = Path(work) / "model.onnx"
                onnx.save(graph, str(plain), save_as_external_data=_size(path) > EXTERNAL_DATA_ABOVE)
                try:
                    with quiet():
                        quantize_dynamic(str(plain), str(qpath), weight_type=QuantType.QInt8)
                except Exception as exc:
                    raise ArchsmithError("quantize", f"onnxruntime's quantiser failed on {ex.name}: {_first_line(exc)}; nothing written") from None
            runners["onnxruntime int8"] = _ort_runner(_ort_session(qpath), ex.names)
            rows = validate(ex, runners["onnxruntime int8"], None)
            report["int8"] = {"validation": rows, "max_abs_diff": max(r["max_abs_diff"] for r in rows),
                              "mean_abs_diff": max(r["mean_abs_diff"] for r in rows),
                              "min_cosine": min(r["cosine"] for r in rows),
                              "size_ratio": round(qpath.stat().st_size / _size(path), 4)}
        say("measuring latency")
        report["latency"] = []
        with torch.no_grad():
            for label, inputs in ex.latency_cases:
                row = {"case": label}
                for name, fn in runners.items():
                    row[f"{name}_ms"] = round(median_ms(lambda: fn(*inputs), repeats=repeats), 3)
                for name in list(runners)[1:]:
                    row[f"{name}_speedup"] = round(row["eager_ms"] / row[f"{name}_ms"], 3)
                report["latency"].append(row)
        report["threads"] = torch.get_num_threads()
        report["notes"] = notes
        files: dict[str, Any] = {p.name: (lambda src: lambda dst: shutil.copyfile(src, dst))(p) for p in sorted(staging.iterdir())}
        report["files"] = sorted(files) + ["export.json"]
        files["export.json"] = json.dumps(report, indent=2) + "\n"
        say("writing")
        written = write_files(out, files, overwrite)
    report["files"] = [str(p) for p in written]
    return report


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
