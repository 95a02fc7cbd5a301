"""MCP server speed over stdio, the way Claude Code runs it (.mcp.json's command).

- start-up: spawn `archsmith serve` to the first `tools/list` answer (includes Python start and the
  mcp handshake), repeated;
- latency: `estimate_config` on Llama-3.2-1B's config, sequential calls over one stdio session,
  p50 / p99; the reference is the same `estimate` called directly in this process.

    python benchmarks/bench_mcp.py [--starts 9] [--calls 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from docs_section import write_section

ROOT = Path(__file__).resolve().parents[1]
ARCHSMITH = Path(sys.executable).parent / "archsmith-mcp"  # what .mcp.json starts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def start_once(params) -> float:
    from mcp import Client

    start = time.perf_counter()
    async with Client(params) as client:
        await client.list_tools()
        return time.perf_counter() - start


async def latencies(params, config: dict, calls: int) -> list[float]:
    from mcp import Client

    times = []
    async with Client(params) as client:
        for _ in range(10):  # warm: first-call imports
            await client.call_tool("estimate_config", {"config": config, "batch": 1, "seq": 2048})
        for _ in range(calls):
            start = time.perf_counter()
            result = await client.call_tool("estimate_config", {"config": config, "batch": 1, "seq": 2048})
            times.append(time.perf_counter() - start)
            assert not result.is_error
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=9)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    from importlib.metadata import version

    from mcp import StdioServerParameters

    from archsmith.catalog import reference_config
    from archsmith.estimate import estimate
    from archsmith.hfconfig import spec_from_hf

    config = reference_config("meta-llama__Llama-3.2-1B")
    with tempfile.TemporaryDirectory() as root:
        params = StdioServerParameters(command=str(ARCHSMITH), args=[],
                                       env={"PATH": os.environ.get("PATH", ""), "ARCHSMITH_WORKSPACE": root, "HOME": root})
        starts = [anyio.run(start_once, params) for _ in range(args.starts)]
        calls = anyio.run(latencies, params, config, args.calls)
    direct = []
    for _ in range(args.calls):
        start = time.perf_counter()
        estimate(spec_from_hf(config), batch=1, seq=2048)
        direct.append(time.perf_counter() - start)
    ms = lambda s: f"{1000 * s:.2f}"  # noqa: E731
    body = f"""## MCP server over stdio: start-up and tool latency

`python benchmarks/bench_mcp.py --starts {args.starts} --calls {args.calls}` — machine: {platform.machine()}, {os.cpu_count()} cores,
Python {platform.python_version()}, mcp {version('mcp')}.

| measure | median (ms) | p99 (ms) | runs |
|---|---:|---:|---:|
| spawn `archsmith-mcp` (stdio) -> first `tools/list` answer | {ms(statistics.median(starts))} | {ms(percentile(starts, 0.99))} | {args.starts} |
| `estimate_config` (Llama-3.2-1B, seq 2048) over stdio | {ms(statistics.median(calls))} | {ms(percentile(calls, 0.99))} | {args.calls} |
| reference: the same `estimate` called in process | {ms(statistics.median(direct))} | {ms(percentile(direct, 0.99))} | {args.calls} |

Targets (issue #4): start-up < 1000 ms, estimate p50 < 20 ms. The protocol and JSON round trip cost
{statistics.median(calls) / statistics.median(direct):.1f}x the bare engine call (medians).
"""
    print(write_section("bench_mcp", body))


if __name__ == "__main__":
    main()
