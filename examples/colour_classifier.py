"""A small image classifier to measure: a ViT taught six colours, and a held-out folder of photos to test it on.

    python examples/colour_classifier.py runs/colours

writes runs/colours/model (config.json, model.safetensors, preprocessor_config.json: what
AutoModelForImageClassification and AutoImageProcessor load) and runs/colours/photos/<Label>/*.png (shades
the model never saw). Seeded; a few seconds on a CPU.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

COLOURS = {"red": (200, 30, 30), "green": (30, 170, 40), "blue": (30, 50, 200), "yellow": (220, 200, 30),
           "purple": (130, 40, 160), "grey": (128, 128, 128)}


def shade(rng: random.Random, rgb: tuple[int, int, int]) -> Image.Image:
    """A noisy image of one colour, a random size and brightness."""
    scale = rng.uniform(0.7, 1.2)
    w, h = rng.randint(24, 64), rng.randint(24, 64)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-25, 26, size=(h, w, 3))
    return Image.fromarray(np.clip(np.array(rgb) * scale + noise, 0, 255).astype(np.uint8))


def main(out: Path) -> None:
    labels = list(COLOURS)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, num_labels=len(labels), id2label=dict(enumerate(labels)))
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(60):
        ids = [rng.randrange(len(labels)) for _ in range(24)]
        batch = processor(images=[shade(rng, COLOURS[labels[i]]) for i in ids], return_tensors="pt")
        loss = model(**batch, labels=torch.tensor(ids)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 19:
            print(f"step {step + 1}: loss {loss.item():.3f}")
    model.save_pretrained(out / "model")
    processor.save_pretrained(out / "model")
    held_out = random.Random(1)
    for label, rgb in COLOURS.items():
        folder = out / "photos" / label.capitalize()
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(8):
            shade(held_out, rgb).save(folder / f"{i}.png")
    print(f"wrote {out / 'model'} and {out / 'photos'} ({len(COLOURS) * 8} held-out photos)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/colours"))
