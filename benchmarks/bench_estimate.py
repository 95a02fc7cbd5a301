"""Time to estimate Llama-3.1-405B in closed form vs instantiating it on the meta device.

The reference is what `accelerate estimate-memory` does: build the transformers model under
the meta device and sum parameter sizes. Both run in the same process, repeated; medians and
their ratio are written into docs/benchmarks.md between the markers of this benchmark.

    python benchmarks/bench_estimate.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from docs_section import write_section

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "src" / "data" / "reference_architectures" / "meta-llama__Llama-3.1-405B.json"


def ours(cfg: dict) -> int:
    from archsmith.estimate import estimate
    from archsmith.hfconfig import spec_from_hf

    result = estimate(spec_from_hf(cfg), batch=1, seq=4096)
    return result["params"]["total"]


def reference(cfg: dict) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    return sum(p.numel() for p in model.parameters())


def timed(fn, cfg, repeats: int) -> tuple[list[float], int]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(cfg)
        times.append(time.perf_counter() - start)
    return times, value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    import torch
    import transformers

    cfg = json.loads(CONFIG.read_text())
    ours(cfg), reference(cfg)  # warm imports and caches for both sides
    t_ours, n_ours = timed(ours, cfg, args.repeats)
    t_ref, n_ref = timed(reference, cfg, args.repeats)
    assert n_ours == n_ref, (n_ours, n_ref)
    m_ours, m_ref = statistics.median(t_ours), statistics.median(t_ref)
    body = f"""## Estimate vs meta-device instantiation (Llama-3.1-405B)

`python benchmarks/bench_estimate.py --repeats {args.repeats}` — machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores,
Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.

| method | median of {args.repeats} (ms) | min (ms) | parameters |
|---|---:|---:|---:|
| archsmith closed-form `estimate` (params + FLOPs + memory) | {1000 * m_ours:.2f} | {1000 * min(t_ours):.2f} | {n_ours:,} |
| transformers `from_config` on the meta device + sum (as `accelerate estimate-memory`) | {1000 * m_ref:.2f} | {1000 * min(t_ref):.2f} | {n_ref:,} |

Ratio (reference / ours, medians): **{m_ref / m_ours:.1f}x** faster, same count.
"""
    print(write_section("bench_estimate", body))


if __name__ == "__main__":
    main()
