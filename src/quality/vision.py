"""Image classifiers: top-1 / top-5 accuracy on a local image folder, through the model's own image processor.

The folder holds one sub-folder per class (`photos/cat/*.jpg`, `photos/dog/*.png`), named as the model's labels
(`config.id2label`, compared in lower case without punctuation); a sub-folder no label matches is an error naming
it. Images are read with Pillow and prepared by `AutoImageProcessor` (its resize, crop and normalisation are
reported); stderr is the standard error of the mean of per-image hits, as the harness computes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archsmith.baselines import key
from archsmith.errors import ArchsmithError
from archsmith.quality import stderr

IMAGES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}
MAX_IMAGES = 100_000
PROCESSOR_SETTINGS = ("size", "crop_size", "do_center_crop", "resample", "image_mean", "image_std", "do_normalize",
                      "rescale_factor")


def images(folder: Path, labels: dict[str, int], limit: int | None) -> list[tuple[Path, int]]:
    """(image, label id) pairs, classes interleaved so that `limit` takes from every class."""
    if not folder.is_dir():
        raise ArchsmithError("images", f"{folder} is not a directory of class folders")
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ArchsmithError("images", f"{folder} has no class folders (one sub-folder of images per label)")
    unknown = [d.name for d in classes if key(d.name) not in labels]
    if unknown:
        raise ArchsmithError("images", f"class folder(s) {', '.join(unknown[:5])} match no label of the model "
                                       f"(labels: {', '.join(list(labels)[:8])}{', ...' if len(labels) > 8 else ''})")
    per_class = [[(f, labels[key(d.name)]) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGES] for d in classes]
    pairs = [p for i in range(max(map(len, per_class))) for files in per_class if i < len(files) for p in [files[i]]]
    if not pairs:
        raise ArchsmithError("images", f"no images ({', '.join(sorted(IMAGES))}) in the class folders of {folder}")
    return pairs[:min(limit or MAX_IMAGES, MAX_IMAGES)]


def evaluate(path: Path, folder: Path, limit: int | None = None, batch: int = 16) -> dict[str, Any]:
    """{"results": {"images": {"top1", "top1_stderr", "top5", "top5_stderr", "samples"}}, "settings": processor}."""
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    from archsmith.analyze import quiet_transformers

    quiet_transformers()
    config = AutoConfig.from_pretrained(path)
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if not id2label:
        raise ArchsmithError("model", f"{path} has no id2label: not an image classifier")
    labels = {key(v): k for k, v in id2label.items()}
    pairs = images(folder, labels, limit)
    try:
        processor = AutoImageProcessor.from_pretrained(path)
        model = AutoModelForImageClassification.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                                trust_remote_code=False).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise ArchsmithError("model", f"transformers cannot load {path} as an image classifier: {str(exc)[:160]}") from None
    k = min(5, len(id2label))
    top1, topk = [], []
    from tqdm import tqdm

    for start in tqdm(range(0, len(pairs), batch), desc="images", disable=len(pairs) <= batch):
        chunk = pairs[start:start + batch]
        pictures = []
        for file, _ in chunk:
            try:
                with Image.open(file) as image:
                    pictures.append(image.convert("RGB"))
            except OSError as exc:
                raise ArchsmithError("images", f"{file} is not a readable image ({exc})") from None
        with torch.inference_mode():
            logits = model(**processor(images=pictures, return_tensors="pt")).logits
        best = logits.topk(k, dim=-1).indices
        for row, (_, label) in enumerate(chunk):
            top1.append(int(best[row, 0]) == label)
            topk.append(label in best[row].tolist())
    metrics: dict[str, Any] = {"top1": sum(top1) / len(top1), "top1_stderr": stderr(top1)}
    if len(id2label) > 5:
        metrics.update(top5=sum(topk) / len(topk), top5_stderr=stderr(topk))
    metrics["samples"] = len(top1)
    shown = {name: getattr(processor, name) for name in PROCESSOR_SETTINGS if getattr(processor, name, None) is not None}
    return {"results": {folder.name: metrics}, "higher_is_better": {folder.name: {"top1": True, "top5": True}},
            "processor": {"class": type(processor).__name__, **{k: _plain(v) for k, v in shown.items()}},
            "params": sum(p.numel() for p in model.parameters())}


def _plain(value: Any) -> Any:
    """A processor setting as JSON data: tuples as lists, size objects as their set fields."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__ if getattr(value, k) is not None}
    return value if isinstance(value, (int, float, str, bool)) else str(value)
