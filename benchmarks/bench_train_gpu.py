"""bf16 model FLOPs utilisation (MFU) of archsmith's training loop on one GPU: a ~1B design at seq 2048.

`archsmith design --params 1B` gives the model (archsmith.network.CausalLM); `archsmith.train.loop.Trainer`,
the loop behind `archsmith train`, trains it with bf16 autocast over fp32 master weights, fused AdamW,
gradient clipping, the LR schedule and each block under torch.compile (`--compile`). Its steady tokens/s
(from its own metrics.jsonl, every step timed from the previous step's end, the first steps excluded for
compilation) are set against a minimal hand-written loop over a fresh copy of the same model in the same
process: the same micro-batch, accumulation, autocast, compiled blocks, fused AdamW and clipping.

MFU = training FLOPs per token (`archsmith.estimate`: matmuls of forward + backward, causal attention
counted for the half that is computed) x tokens/s / the GPU's dense bf16 peak (`src/data/gpus.yaml`).
The 6N figure (6 x parameters per token, attention left out) is given beside it.

    python benchmarks/bench_train_gpu.py [--micro-batch 8] [--accum 2] [--steps 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from docs_section import write_section

GPU_KEYS = {"H100 80GB HBM3": "h100-sxm", "H100 PCIe": "h100-pcie", "H200": "h200"}  # torch's device name -> gpus.yaml
WARMUP_STEPS = 5  # compilation and allocator warm-up happen in the first steps; excluded from the medians


def make_model(spec, seed: int):
    import torch

    from archsmith.network import CausalLM

    return CausalLM.from_spec(spec, seed=seed, dtype=torch.float32, device="cuda")


def samples(vocab: int, n: int, seq: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (n, seq), generator=gen)  # random tokens: the step's cost does not depend on them


def collate(rows):
    import torch

    return {"input_ids": torch.stack(rows)}


def objective(modules, batch):
    out = modules.model(batch["input_ids"], labels=batch["input_ids"])
    return out.loss, {"nll": out.loss.detach()}


def ours(spec, data, micro: int, accum: int, steps: int) -> float:
    """Steady tokens/s of the Trainer, from its metrics."""
    import torch

    from archsmith.train.loop import Trainer, TrainConfig

    model = make_model(spec, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(steps=steps, global_batch=micro * accum, micro_batch=micro, precision="bf16", compile=True,
                             warmup=2, progress=False)
        Trainer(model, objective, train=data, collate=collate, out=Path(tmp) / "run", config=config,
                save_model=lambda *args: None).fit()
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    del model
    torch.cuda.empty_cache()
    return statistics.median(r["tokens_per_s"] for r in rows if r["kind"] == "train" and r["step"] > WARMUP_STEPS)


def reference(spec, data, micro: int, accum: int, steps: int) -> float:
    """Steady tokens/s of a minimal loop: autocast bf16, compiled blocks, fused AdamW, clipping."""
    import torch

    model = make_model(spec, seed=0)
    for block in model.model.layers:
        block.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    rates, i = [], 0
    for step in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(accum):
            batch = data[i % len(data): i % len(data) + micro].cuda(non_blocking=True)
            i += micro
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(batch, labels=batch).loss / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the Trainer reads its loss once per step too
        if step >= WARMUP_STEPS:
            rates.append(micro * accum * data.shape[1] / (time.perf_counter() - start))
    del model, opt
    torch.cuda.empty_cache()
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=1e9)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch
    import transformers

    from archsmith.design import design
    from archsmith.estimate import estimate
    from archsmith.gpus import get_gpu

    name = torch.cuda.get_device_name()
    key = next(k for pattern, k in GPU_KEYS.items() if pattern in name)
    peak = get_gpu(key)["bf16_tflops"] * 1e12
    rec = design(params=args.params, context=args.seq)["recommended"]
    spec = rec.spec
    flops = estimate(spec, batch=1, seq=args.seq)["flops"]
    n_params = rec.summary["params"]["total"]
    data = samples(spec.vocab_size, 4 * args.micro_batch * args.accum, args.seq)
    runs = {"ours": [], "reference": []}
    for _ in range(args.repeats):  # interleaved
        runs["ours"].append(ours(spec, data, args.micro_batch, args.accum, args.steps))
        runs["reference"].append(reference(spec, data, args.micro_batch, args.accum, args.steps))
        print({k: [round(v) for v in vs] for k, vs in runs.items()}, flush=True)
    tps = {k: statistics.median(v) for k, v in runs.items()}
    mfu = {k: flops["training_per_token"] * v / peak for k, v in tps.items()}
    six_n = {k: 6 * n_params * v / peak for k, v in tps.items()}
    s = spec
    lines = [
        "## Training on one GPU: bf16 MFU of a ~1B design at seq 2048",
        "",
        f"`python benchmarks/bench_train_gpu.py --micro-batch {args.micro_batch} --accum {args.accum} --steps {args.steps} "
        f"--repeats {args.repeats}` — {name} (dense bf16 peak {peak / 1e12:,.1f} TFLOP/s from `gpus.yaml`, key `{key}`), "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.",
        "",
        f"Model: `archsmith design --params 1B --context {args.seq}`, {n_params:,} parameters (hidden {s.hidden_size}, "
        f"{s.num_layers} layers, {s.num_heads} heads / {s.num_kv_heads} KV heads, SwiGLU {s.ffn_size}, vocabulary "
        f"{s.vocab_size:,}); micro-batch {args.micro_batch} x {args.seq} tokens, {args.accum} micro-batches per step; "
        "bf16 autocast over fp32 master weights, fused AdamW, clipping, each block compiled. Training FLOPs per token "
        f"{flops['training_per_token'] / 1e9:.2f} G (6N: {6 * n_params / 1e9:.2f} G). Medians over steps "
        f"{WARMUP_STEPS + 1}-{args.steps} of {args.repeats} interleaved runs per side.",
        "",
        "| loop | tokens/s | TFLOP/s | MFU | MFU (6N) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, key_ in (("archsmith Trainer (`archsmith train`)", "ours"), ("minimal hand-written loop", "reference")):
        lines.append(f"| {label} | {tps[key_]:,.0f} | {mfu[key_] * peak / 1e12:,.0f} | **{mfu[key_]:.1%}** | {six_n[key_]:.1%} |")
    lines += ["", f"Ratio archsmith / minimal loop: **{tps['ours'] / tps['reference']:.3f}**. Target (issue #12): MFU >= 45%.", ""]
    print(write_section("bench_train_gpu", "\n".join(lines)))


if __name__ == "__main__":
    main()
