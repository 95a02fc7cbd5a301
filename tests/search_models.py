"""Factories for the search tests: the example CNN, logging every model built (device, parameters) to
$ARCHSMITH_TEST_BUILD_LOG so a test can prove that no trial over the cap was ever built for training."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "examples")]  # small_cnn beside this file (a copy) or in examples/

from small_cnn import images, small_cnn  # noqa: E402


def logged_cnn(**kwargs):
    module = small_cnn(**kwargs)
    log = os.environ.get("ARCHSMITH_TEST_BUILD_LOG")
    if log:
        device = next(module.parameters()).device.type
        with open(log, "a") as fh:
            fh.write(f"{device} {sum(p.numel() for p in module.parameters())}\n")
    return module


def float_targets():
    for x, y in images(8):
        yield x, y.float()


def not_pairs():
    import torch

    return [torch.zeros(2, 2)] * 4


__all__ = ["images", "logged_cnn", "float_targets", "not_pairs"]
