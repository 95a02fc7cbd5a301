"""Checkpoint formats in a model repository, described from its file list (names and sizes), never loaded.

safetensors are what archsmith reads (headers for counts, tensors for weights); `pytorch_model.bin` pickles are read
only through `torch.load(weights_only=True)`; ONNX and GGUF files are recognised and described (size, and the
precision or quantisation their names carry, as llama.cpp and Optimum name them); TensorFlow and Flax weights are
named with the conversion that turns them into safetensors.
"""

from __future__ import annotations

import re
from typing import Any

# (format, file-name pattern, what archsmith does with it)
FORMATS = (
    ("safetensors", re.compile(r"\.safetensors$"), "read: headers for parameter counts, tensors for weights"),
    ("pytorch", re.compile(r"(^|/)pytorch_model(-\d+-of-\d+)?\.bin$"), "read with torch.load(weights_only=True) when no safetensors"),
    ("onnx", re.compile(r"\.onnx$"), "recognised, not loaded: run it with onnxruntime"),
    ("gguf", re.compile(r"\.gguf$"), "recognised, not loaded: run it with llama.cpp"),
    ("tensorflow", re.compile(r"(^|/)tf_model(-\d+-of-\d+)?\.h5$"), "not read: AutoModel.from_pretrained(repo, from_tf=True) "
                                                                   "(needs TensorFlow), then save_pretrained writes safetensors"),
    ("flax", re.compile(r"(^|/)flax_model(-\d+-of-\d+)?\.msgpack$"), "not read: AutoModel.from_pretrained(repo, from_flax=True) "
                                                                     "(needs Flax), then save_pretrained writes safetensors"),
)
# what a file name says about precision or quantisation: llama.cpp's GGUF types, Optimum's ONNX suffixes
GGUF_TYPE = re.compile(r"(?i)(?:^|[._-])((?:I?Q\d(?:_[0-9A-Z]+)*)|BF16|F16|F32)(?=\.gguf$|[._-])")
ONNX_TYPE = re.compile(r"(?i)(?:^|[._-])(fp16|fp32|int8|uint8|q4f16|q4|bnb4|quantized)(?=\.onnx$|[._-])")
MAX_LISTED = 16  # files listed per format


def describe(files: list[tuple[str, int | None]]) -> dict[str, Any]:
    """{formats: [{format, files, bytes, handling, variants}], notes} for a repository's (file name, size) list."""
    found: dict[str, dict[str, Any]] = {}
    for name, size in files:
        for kind, pattern, handling in FORMATS:
            if pattern.search(name):
                row = found.setdefault(kind, {"format": kind, "files": 0, "bytes": 0, "handling": handling, "listed": []})
                row["files"] += 1
                row["bytes"] += size or 0
                if len(row["listed"]) < MAX_LISTED:
                    typed = {"gguf": GGUF_TYPE, "onnx": ONNX_TYPE}.get(kind)
                    label = typed.search(name.rsplit("/", 1)[-1]) if typed else None
                    row["listed"].append({"file": name, "bytes": size, "precision": label.group(1).upper() if label else None})
                break
    notes = []
    if found and not {"safetensors", "pytorch"} & set(found):
        kinds = ", ".join(sorted(found))
        notes.append(f"no safetensors or PyTorch weights ({kinds} only): archsmith counts nothing from the weights here"
                      + ("; TensorFlow / Flax weights convert as each row says" if {"tensorflow", "flax"} & set(found) else ""))
    return {"formats": list(found.values()), "notes": notes}
