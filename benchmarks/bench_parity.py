"""What proving a design's config.json costs (`archsmith.parity`): tiny instances in transformers and network.py.

Warm (one process, torch and transformers imported): each component request of `design_from_text(params="100M")`
with the proof cache emptied before the run, against the same request with the cache full (the design's own work,
measured right after in the same repeat); the difference is what the proofs cost, and `proofs` how many tiny
instances the design proved (the family chosen at the reference depth, then the recommended config). Cold (a new
process per run, as the CLI runs): the alternating-window MoE request against a plain design (no layout switch: no
proof, no torch import). Medians of the repeats, wall-clock seconds. Section to docs/benchmarks.md.

    python benchmarks/bench_parity.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

from docs_section import write_section

REQUESTS = {
    "window 512, alternate layers": dict(window=512, window_layers="alternate"),
    "window 512, 3 sliding : 1 full": dict(window=512, window_layers="3:1"),
    "window 512, every layer": dict(window=512, window_layers="all"),
    "MoE 8:2, alternate layers": dict(moe="8:2", moe_layers="alternate"),
    "MoE 8:2 + window 512 alternate (issue 25)": dict(moe="8:2", window=512, window_layers="alternate"),
    "MoE 8:2 upper layers, MLA": dict(moe="8:2", moe_layers="upper", attention="mla"),
}
COLD = {"plain design (no layout switch)": [], "MoE 8:2 + window 512 alternate": ["--moe", "8:2", "--window", "512",
                                                                                   "--window-layers", "alternate"]}


def warm(repeats: int) -> list[tuple[str, str, int, float, float]]:
    from archsmith import parity
    from archsmith.design import design_from_text

    design_from_text(params="100M", moe="8:2", window=512)  # imports torch and transformers once
    rows = []
    for name, asked in REQUESTS.items():
        proving, own, count = [], [], 0
        for _ in range(repeats):
            parity._cache.clear()
            start = time.perf_counter()
            result = design_from_text(params="100M", **asked)
            middle = time.perf_counter()
            design_from_text(params="100M", **asked)
            end = time.perf_counter()
            proving.append((middle - start) - (end - middle))
            own.append(end - middle)
            count = len(parity._cache)
        rows.append((name, result["recommended"].spec.model_type, count, statistics.median(proving), statistics.median(own)))
        print(rows[-1], flush=True)
    return rows


IMPORTS = "import torch, transformers; from transformers import AutoModelForCausalLM; import archsmith.network"


def cold(repeats: int) -> dict[str, float]:
    runs = []
    for _ in range(repeats):  # what the first proof imports, alone
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True)
        runs.append(time.perf_counter() - start)
    times = {"imports": statistics.median(runs)}
    for name, flags in COLD.items():
        runs = []
        for i in range(repeats):
            out = f"/tmp/bench-parity-{os.getpid()}-{i}"
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "archsmith.cli", "design", "--params", "100M", *flags, "--out", out,
                            "--overwrite", "--json"], check=True, capture_output=True)
            runs.append(time.perf_counter() - start)
        times[name] = statistics.median(runs)
        print(name, times[name], flush=True)
    return times


def main() -> None:
    import torch
    import transformers

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows, starts = warm(args.repeats), cold(max(3, args.repeats // 2))
    imports, plain, moe = starts.values()
    lines = [
        "## Proving emitted configs: tiny instances in transformers and network.py (CPU)",
        "",
        f"`python benchmarks/bench_parity.py --repeats {args.repeats}` — machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs, Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}. Each design of `--params 100M` with the request below, proof cache "
        "emptied, against the same design with the cache full (the design's own work, measured right after in the same "
        "repeat); medians of the repeats, seconds. proofs: tiny instances proved (at the reference depth, then the "
        "written config).",
        "",
        "| request | written as | proofs | proofs s | design s | proofs / design |",
        "|---|---|---:|---:|---:|---:|",
        *[f"| {name} | {family} | {count} | {proof:.3f} | {own:.3f} | {proof / own:.2f}x |" for name, family, count, proof, own in rows],
        "",
        f"A new process per run (as `archsmith design` runs), medians of {max(3, args.repeats // 2)}: a plain design "
        f"(no layout switch, nothing to prove, no torch import) {plain:.2f} s; the alternating-window MoE request "
        f"{moe:.2f} s ({moe / plain:.2f}x); a process that only imports what the first proof needs (torch, transformers' "
        f"AutoModelForCausalLM, archsmith.network) takes {imports:.2f} s.",
    ]
    print(write_section("parity", "\n".join(lines)))


if __name__ == "__main__":
    main()
