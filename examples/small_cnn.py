"""A small CNN and a synthetic image task: the README's and the tests' architecture-search example.

`archsmith search examples/small_cnn.py:small_cnn --space examples/small_cnn.yaml --data examples/small_cnn.py:images
--max-params 20K --out runs/cnn-search`: the factory's keyword arguments (width, depth, norm) are what the space
searches.
"""

import torch
from torch import nn

CLASSES, SIZE = 4, 12


def small_cnn(width: int = 16, depth: int = 2, norm: str = "batch") -> nn.Module:
    """`depth` 3x3 conv blocks of `width` channels (BatchNorm or GroupNorm, ReLU), global pooling, a linear head:
    (N, 1, SIZE, SIZE) -> (N, CLASSES) logits."""
    layers, channels = [], 1
    for _ in range(depth):
        layers += [nn.Conv2d(channels, width, 3, padding=1),
                   nn.BatchNorm2d(width) if norm == "batch" else nn.GroupNorm(min(4, width), width), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, CLASSES))


def images(batch: int = 32, seed: int = 0):
    """Endless (images (batch, 1, SIZE, SIZE), labels (batch,)) pairs: class k brightens quadrant k of a noisy image."""
    gen = torch.Generator().manual_seed(seed)
    half = SIZE // 2
    while True:
        labels = torch.randint(0, CLASSES, (batch,), generator=gen)
        x = torch.randn(batch, 1, SIZE, SIZE, generator=gen) * 0.5
        for k in range(CLASSES):
            row, col = divmod(k, 2)
            x[labels == k, :, row * half:(row + 1) * half, col * half:(col + 1) * half] += 1.0
        yield x, labels


def one_batch():
    """One example batch of images for `archsmith prove`: (8, 1, SIZE, SIZE)."""
    return next(images(8))[0]
