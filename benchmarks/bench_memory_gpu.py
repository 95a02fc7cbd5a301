"""Planned vs measured peak memory of `archsmith train`'s step: `archsmith.peak` against the device's own count.

Each case is a design (`archsmith design --params ...`, archsmith.network.CausalLM) trained by
`archsmith.train.loop.Trainer`, the loop behind `archsmith train`: fp32 weights, bf16 autocast, fp32 loss, fused
AdamW, clipping (and per case activation checkpointing, torch.compile, an MoE, a large vocabulary).

On a GPU the measurement is `torch.cuda.max_memory_allocated` (and `_reserved`) over full steps, the first
included; on CPU (`--cpu`, small designs) it is the weights, optimizer state and buffers plus the most one step
allocates, from torch.profiler's memory events. The table goes into docs/benchmarks.md.

    python benchmarks/bench_memory_gpu.py            # on a CUDA machine: the GPU table (about 10 minutes on an H100)
    python benchmarks/bench_memory_gpu.py --cpu      # small designs on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import platform
import tempfile
import time
from pathlib import Path

from docs_section import write_section

# (name, design parameters, micro-batch, seq, changes: checkpointing, compile, vocab, moe)
GPU_CASES = [
    ("125M", 125_000_000, 8, 1024, {}),
    ("350M", 350_000_000, 8, 2048, {}),
    ("1B", 1_000_000_000, 4, 2048, {}),
    ("1B, checkpointing", 1_000_000_000, 8, 2048, {"checkpointing": True}),
    ("1B, 128k vocabulary", 1_000_000_000, 4, 2048, {"vocab": 128_256}),
    ("1B, 256k vocabulary, checkpointing", 1_000_000_000, 2, 2048, {"vocab": 262_144, "checkpointing": True}),
    ("3B, checkpointing", 3_000_000_000, 4, 2048, {"checkpointing": True}),
    ("1B, --compile", 1_000_000_000, 4, 2048, {"compile": True}),
    ("MoE: Qwen3-30B-A3B cut to 6 layers", 0, 2, 2048, {"moe": "Qwen__Qwen3-30B-A3B.json", "layers": 6}),
]
CPU_CASES = [  # bf16 matmuls are slow on CPU: small bf16 cases, the larger ones in fp32
    ("10M", 10_000_000, 2, 256, {}),
    ("10M, checkpointing", 10_000_000, 2, 512, {"checkpointing": True}),
    ("10M, fp32, 32k vocabulary", 10_000_000, 2, 512, {"vocab": 32_000, "precision": "fp32"}),
    ("30M, fp32", 30_000_000, 4, 512, {"precision": "fp32"}),
    ("30M, fp32, checkpointing", 30_000_000, 8, 512, {"precision": "fp32", "checkpointing": True}),
]


def case_spec(params: int, changes: dict):
    from importlib import resources

    from archsmith.design import design
    from archsmith.hfconfig import load_spec

    if changes.get("moe"):  # a published MoE config, fewer layers
        path = resources.files("archsmith.data").joinpath("reference_architectures", changes["moe"])
        return dataclasses.replace(load_spec(str(path)), num_layers=changes["layers"])
    spec = design(params=params, context=2048)["recommended"].spec
    if "vocab" in changes:
        spec = dataclasses.replace(spec, vocab_size=changes["vocab"])
    return spec


def measure(spec, micro: int, seq: int, changes: dict, device: str) -> dict:
    import numpy as np
    import torch

    from archsmith.files import HeldDir
    from archsmith.network import CausalLM
    from archsmith.train.data import lm_batch
    from archsmith.train.loop import TrainConfig, Trainer
    from archsmith.train.memory import measured_step
    from archsmith.train.run import causal_lm_objective
    from functools import partial

    rng = np.random.default_rng(0)
    windows = [rng.integers(0, spec.vocab_size, seq) for _ in range(4 * micro)]
    model = CausalLM.from_spec(spec, seed=0, device=device)
    precision = changes.get("precision", "bf16")
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(steps=8, global_batch=micro, precision=precision, checkpointing=changes.get("checkpointing", False),
                             compile=changes.get("compile", False), progress=False)
        trainer = Trainer(model, causal_lm_objective, windows, partial(lm_batch, pad_id=0, eos_id=1), tmp, config)
        with HeldDir(tmp, "out") as trainer.run:
            trainer._prepare()
            start = time.perf_counter()
            found = measured_step(trainer, steps=3)
            found["seconds"] = time.perf_counter() - start
    del trainer, model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="small designs on CPU (torch.profiler) instead of the GPU table")
    args = parser.parse_args()
    import torch
    import transformers

    from archsmith import estimate as est
    from archsmith.peak import training_peak
    from archsmith.units import human_bytes

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu, or on a GPU machine")
    rows = []
    for name, params, micro, seq, changes in (CPU_CASES if args.cpu else GPU_CASES):
        spec = case_spec(params, changes)
        dtype = changes.get("precision", "bf16")
        plan = training_peak(spec, micro, seq, dtype, changes.get("checkpointing", False), changes.get("compile", False))
        old = est.training_memory(spec, micro, seq, dtype, checkpointing=changes.get("checkpointing", False))["total_bytes"]
        found = measure(spec, micro, seq, changes, device)
        real = found["peak_bytes"]
        rows.append(f"| {name} | {est.count_params(spec)['total']:,} | {micro} x {seq} | {human_bytes(real)} | "
                    f"{human_bytes(plan['peak_bytes'])} ({plan['at']}) | **{plan['peak_bytes'] / real - 1:+.1%}** | "
                    f"{old / real - 1:+.1%} |" + (f" {found['reserved_bytes'] / real:.3f} |" if device == "cuda" else "")
                    + ("" if plan["exact"] else " not held: " + "; ".join(plan["not_calibrated"])))
        print(rows[-1], flush=True)
    machine = torch.cuda.get_device_name(0) if device == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    what = ("`torch.cuda.max_memory_allocated` over three full steps (the first included)" if device == "cuda" else
            "weights + optimizer state + buffers + the most the third step allocates (torch.profiler memory events)")
    body = f"""## Training peak memory: plan vs measurement ({device.upper()})

`python benchmarks/bench_memory_gpu.py{' --cpu' if args.cpu else ''}` — {machine}, Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.

`archsmith design --params ...` models trained by the Trainer behind `archsmith train` ({'bf16 autocast over fp32 weights' if device == 'cuda' else 'bf16 autocast, or fp32 where the case says'}, fp32 loss, fused AdamW, clipping). Measured: {what}. Planned: `memory.training_peak_bytes` of `archsmith estimate` (`archsmith.peak`), with the phase it falls in; sum of parts: `training_total_bytes`, the estimate before the step's timeline was modelled.{' Reserved / allocated: the caching allocator over the peak (the plan assumes 1.10).' if device == 'cuda' else ''}

Allocations are deterministic: one run per case.

| case | parameters | micro-batch x seq | measured peak | planned peak | error | sum of parts |{' reserved / allocated |' if device == 'cuda' else ''}
|---|---:|---|---:|---:|---:|---:|{'---:|' if device == 'cuda' else ''}
""" + "\n".join(rows)
    write_section(f"bench_memory_{device}", body)
    print(body)


if __name__ == "__main__":
    main()
