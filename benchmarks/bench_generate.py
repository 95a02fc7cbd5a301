"""Speculative decoding against plain KV-cache decoding on CPU: a target design and a ~4x smaller draft.

Both share a byte-level BPE tokenizer trained on the shipped stories (tests/data/stories.txt) and are trained
on those stories with `archsmith train`'s code path (archsmith.train.run.train, the same steps, batch and seed)
so that the draft agrees with the target as a trained small model would. Then, on prompts cut from the
held-out stories (tests/data/stories_heldout.txt), greedy decoding of N new tokens at batch 1 (no stop token):
`archsmith.generate.generate` with the target alone against `speculative_generate` with the draft for several
k (tokens the draft proposes per target forward), interleaved run by run; the tokens must be identical (the
script checks every run), and the prompts as one batch with k = 4. Sampled rows (temperature 0.8, top-p 0.95): plain against speculative with k = 4.
One torch thread while decoding, and process CPU time as the clock beside wall time: the machine is shared,
and wall time swings with the neighbours' load while CPU time per token does not. Medians of the runs,
summed over the prompts; speed-up = plain seconds / speculative seconds in the same run. Section to
docs/benchmarks.md.

    python benchmarks/bench_generate.py [--repeats 5] [--steps 120] [--new-tokens 128]

It took 9 minutes on 2 cores shared with other work (the training 318 s of it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from docs_section import write_section

ROOT = Path(__file__).resolve().parents[1]
STORIES = ROOT / "tests" / "data" / "stories.txt"
HELDOUT = ROOT / "tests" / "data" / "stories_heldout.txt"
# ArchitectureSpec fields (the vocabulary and special ids come from the tokenizer): a ~6M target, a ~1.6M draft
TARGET = dict(hidden_size=256, num_layers=8, num_heads=8, num_kv_heads=4, ffn_size=688, context_length=512)
DRAFT = dict(hidden_size=192, num_layers=3, num_heads=6, num_kv_heads=2, ffn_size=512, context_length=512)


def make_models(tmp: Path, steps: int, batch: int, seq: int, lr: float) -> tuple[Path, Path, float]:
    """Tokenizer on the stories, then the target and the draft trained the same way; their final/ directories."""
    from archsmith.files import write_files
    from archsmith.hfconfig import hf_from_spec
    from archsmith.spec import ArchitectureSpec
    from archsmith.tokenizer import read_tokenizer, train_tokenizer
    from archsmith.train.run import RunArgs, train

    files, _ = train_tokenizer([str(STORIES)], 1024, progress=False)
    write_files(tmp / "tok", files)
    info = read_tokenizer(tmp / "tok")
    start = time.perf_counter()
    finals = []
    for name, fields in (("target", TARGET), ("draft", DRAFT)):
        spec = ArchitectureSpec(**fields, vocab_size=info.vocab_size, bos_token_id=info.bos_token_id,
                                eos_token_id=info.eos_token_id, pad_token_id=info.pad_token_id)
        write_files(tmp / name, {**files, "config.json": json.dumps(hf_from_spec(spec), indent=2)})
        train(RunArgs(model=str(tmp / name), data=[str(STORIES)], out=str(tmp / f"{name}-run"), steps=steps, batch=batch,
                      seq=seq, lr=lr, progress=False, save_every=steps, eval_samples=32))
        finals.append(tmp / f"{name}-run" / "final")
    return finals[0], finals[1], time.perf_counter() - start


def timed(fn):
    """fn() -> (result, wall seconds, process CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--ks", default="2,3,4,6")
    args = parser.parse_args()
    import torch
    import transformers
    from transformers import AutoTokenizer

    from archsmith.generate import generate, speculative_generate
    from archsmith.network import CausalLM

    ks = [int(k) for k in args.ks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        target_dir, draft_dir, train_s = make_models(Path(tmp), args.steps, args.batch, args.seq, args.lr)
        target = CausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
        draft = CausalLM.from_pretrained(draft_dir, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(target_dir)
    n_target, n_draft = target.num_parameters(), draft.num_parameters()
    stories = [s for s in HELDOUT.read_text().split("\n\n") if s.strip()]
    prompts = [torch.tensor([tokenizer(s).input_ids[:args.prompt_tokens]]) for s in stories[:args.prompts]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    n = args.new_tokens
    sample = dict(temperature=0.8, top_p=0.95)
    # name -> (decode(prompt, seed) -> (tokens, stats or None), greedy)
    cases = {"plain": (lambda p, s: (generate(target, p, max_new_tokens=n, stop_tokens=[]), None), True),
             "draft alone": (lambda p, s: (generate(draft, p, max_new_tokens=n, stop_tokens=[]), None), True)}
    for k in ks:
        cases[f"k={k}"] = (lambda p, s, k=k: speculative_generate(target, draft, p, draft_tokens=k, max_new_tokens=n,
                                                                  stop_tokens=[]), True)
    cases["plain, sampled"] = (lambda p, s: (generate(target, p, max_new_tokens=n, stop_tokens=[], seed=s, **sample), None), False)
    cases["k=4, sampled"] = (lambda p, s: speculative_generate(target, draft, p, draft_tokens=4, max_new_tokens=n,
                                                               stop_tokens=[], seed=s, **sample), False)
    batched = {"plain, batch {B}": (lambda p, s: (generate(target, p, max_new_tokens=n, stop_tokens=[]), None), True),
               "k=4, batch {B}": (lambda p, s: speculative_generate(target, draft, p, draft_tokens=4, max_new_tokens=n,
                                                                    stop_tokens=[]), True)}
    batch = torch.cat(prompts)  # the prompts have the same length: no padding
    batched = {name.format(B=len(prompts)): case for name, case in batched.items()}
    for p in prompts:  # warm-up
        for decode, _ in cases.values():
            decode(p, 0)
    for decode, _ in batched.values():
        decode(batch, 0)
    names = [*cases, *batched]
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    speedup = {name: [] for name in names}  # (CPU time, wall) of the matching plain case / this case, per run
    counts = {name: [0, 0, 0, 0] for name in names}  # accepted, proposed, new tokens (per row), target forwards (first run)
    for r in range(args.repeats):
        totals = {name: [0.0, 0.0] for name in cases}
        for i, p in enumerate(prompts):
            reference = None
            for name, (decode, greedy) in cases.items():
                (out, stats), w, c = timed(lambda: decode(p, 1000 * r + i))
                if name == "plain":
                    reference = out
                elif greedy and name != "draft alone":
                    assert torch.equal(out, reference), f"{name}: speculative tokens differ from plain greedy decoding"
                totals[name][0] += w
                totals[name][1] += c
                if stats is not None and r == 0:
                    for j, value in enumerate((stats.accepted, stats.proposed, stats.new_tokens, stats.target_forwards)):
                        counts[name][j] += value
        for name, (decode, _) in batched.items():
            (out, stats), w, c = timed(lambda: decode(batch, 0))
            if stats is None:
                reference = out
            else:
                assert torch.equal(out, reference), f"{name}: speculative tokens differ from plain greedy decoding"
                if r == 0:
                    counts[name] = [stats.accepted, stats.proposed, stats.new_tokens, stats.target_forwards]
            totals[name] = [w, c]
        for name, (w, c) in totals.items():
            base = totals["plain, sampled" if "sampled" in name else f"plain, batch {len(prompts)}" if "batch" in name else "plain"]
            wall[name].append(w)
            cpu[name].append(c)
            speedup[name].append((base[1] / c, base[0] / w))
        print(f"run {r + 1}/{args.repeats} (CPU s): " + ", ".join(f"{name} {t[1]:.2f}" for name, t in totals.items()), flush=True)
    torch.set_num_threads(threads)

    tokens = args.new_tokens * len(prompts)
    lines = [
        "## Speculative decoding vs plain KV-cache decoding (CPU)",
        "",
        f"`python benchmarks/bench_generate.py --repeats {args.repeats} --steps {args.steps} --seq {args.seq} "
        f"--new-tokens {args.new_tokens}` — "
        f"machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work), 1 torch thread while decoding, "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.",
        "",
        f"Target: Llama layout, hidden {TARGET['hidden_size']}, {TARGET['num_layers']} layers, {n_target:,} parameters; "
        f"draft: hidden {DRAFT['hidden_size']}, {DRAFT['num_layers']} layers, {n_draft:,} parameters "
        f"({n_target / n_draft:.1f}x fewer), the same {tokenizer.vocab_size}-token BPE tokenizer (trained on "
        f"tests/data/stories.txt). Each trained for {args.steps} steps of batch {args.batch} x seq {args.seq} on the "
        f"stories with `archsmith train`'s code path (lr {args.lr}; {train_s:.0f} s for both). "
        f"{len(prompts)} prompts of {args.prompt_tokens} tokens from tests/data/stories_heldout.txt, "
        f"{args.new_tokens} new tokens each, no stop token, one at a time (batch 1) except in the batch rows; greedy speculative tokens checked identical to plain "
        f"decoding on every run; sampled rows against plain sampling with the same settings. Medians of "
        f"{args.repeats} interleaved runs of all prompts; tokens/s from process CPU time (wall-clock in brackets); "
        "speed-up = plain / speculative time within each run, median. "
        "Acceptance = kept / proposed draft tokens; tokens per target forward count the prefill (plain: 1.00).",
        "",
        "| decoding | tokens/s (CPU time) | speed-up (CPU time) | speed-up (wall) | acceptance | tokens per target forward |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        a = counts[name]
        acc = f"{a[0] / a[1]:.2f}" if a[1] else "-"
        per_forward = f"{a[2] / a[3]:.2f}" if a[3] else ("1.00" if name.startswith("plain") else "-")
        label = {"draft alone": "draft alone (for scale)"}.get(name, name if name.startswith("plain") else f"speculative {name}")
        ratio_cpu = statistics.median(x[0] for x in speedup[name])
        ratio_wall = statistics.median(x[1] for x in speedup[name])
        lines.append(f"| {label} | {tokens / statistics.median(cpu[name]):,.0f} ({tokens / statistics.median(wall[name]):,.0f}) "
                     f"| **{ratio_cpu:.2f}x** | {ratio_wall:.2f}x | {acc} | {per_forward} |")
    best = max(ks, key=lambda k: statistics.median(x[0] for x in speedup[f"k={k}"]))
    draft_speed = statistics.median(x[0] for x in speedup["draft alone"])
    lines += ["", f"Best k here: {best}. A round costs k draft forwards plus one target forward over k + 1 tokens; the "
              f"draft alone decodes {draft_speed:.1f}x as fast as the target, so the gain is bounded by that ratio and by the "
              "acceptance rate. In a batch every row keeps the same number of proposals per round, the fewest any row "
              "agreed on (exact for every row), so a batch accepts less than its rows alone. These models were trained briefly on a small, formulaic corpus, where a small model agrees with a "
              "larger one more often than on open text: read the acceptance rates as this corpus's."]
    print(write_section("bench_generate", "\n".join(lines)))


if __name__ == "__main__":
    main()
