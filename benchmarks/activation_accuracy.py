"""Worst-case error of the activation estimate against tensors autograd really saves, for every family.

Runs the same measurement as tests/test_memory.py over every family of `archsmith.families`, each
dtype, each attention kernel transformers accepts for the family and checkpointing, and writes the
table into docs/benchmarks.md. Families whose row is calibrated are held to 5% in tests; the others
show how far the structural estimate is today (the calibration work left for them).

    python benchmarks/activation_accuracy.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import TINY_FAMILIES, tiny_model  # noqa: E402
from test_memory import DTYPES, measure_saved  # noqa: E402

from archsmith import families  # noqa: E402
from archsmith.estimate import activation_bytes  # noqa: E402
from archsmith.hfconfig import spec_from_hf  # noqa: E402
from docs_section import write_section  # noqa: E402

SIZES = [(1, 16), (2, 64), (4, 128)]
WIDE_WINDOW = 4096  # beyond these lengths: CPU SDPA would fall back to the math kernel for a window mask


def main() -> None:
    rows = []
    for name in families.NAMES:
        fam = families.get(name)
        overrides = {"sliding_window": WIDE_WINDOW} if "sliding_window" in TINY_FAMILIES[name] else {}
        spec = spec_from_hf({**TINY_FAMILIES[name], **overrides})
        kernels = [k for k in ("sdpa", "eager") if k in fam.attention_kernels]
        for dtype in ("fp32", "bf16"):
            for attn, ckpt in [(k, False) for k in kernels] + [(kernels[0], True)]:
                model = tiny_model(name, DTYPES[dtype], attn, **overrides)
                model.train()
                if ckpt:
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
                worst = 0.0
                for batch, seq in SIZES:
                    ids = torch.randint(3, spec.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seq))
                    real = measure_saved(model, ids)
                    est = activation_bytes(spec, batch, seq, dtype, attn, ckpt)["total"]
                    worst = max(worst, abs(est - real) / real)
                rows.append((name, fam.activations_uncalibrated is None, dtype, attn, ckpt, worst))
    calibrated = sorted({r[0] for r in rows if r[1]})
    lines = ["## Activation memory: estimate vs `saved_tensors_hooks` measurement", "",
             f"Tiny real transformers models (hidden 64, 2 layers), batch x seq in {SIZES}; worst relative error per setting, "
             "for each attention kernel transformers accepts for the family.",
             f"Calibrated and held to 5% in tests ({', '.join(calibrated)}): worst case "
             f"**{100 * max(r[5] for r in rows if r[1]):.2f}%**. The other families get a structural estimate "
             "(`activations_exact: false` with the reason in `estimate`'s output); their worst case here is "
             f"**{100 * max(r[5] for r in rows if not r[1]):.1f}%**.", "",
             "| family | calibrated | dtype | attention | checkpointing | worst error |", "|---|---|---|---|---|---:|"]
    lines += [f"| {f} | {'yes' if c else 'no'} | {d} | {a} | {'yes' if k else 'no'} | {100 * w:.2f}% |" for f, c, d, a, k, w in rows]
    print(write_section("activation_accuracy", "\n".join(lines)))


if __name__ == "__main__":
    main()
