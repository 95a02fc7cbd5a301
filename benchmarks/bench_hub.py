"""Hub search with enrichment against the local fake Hub (tests/hubserver.py), real huggingface_hub client.

50 hits: 35 whose listing carries the Hub's safetensors summary (no extra request), 10 that need a
safetensors header read (HEAD + one ranged GET), 5 without weights (config.json through our
estimator). Measures total time and HTTP requests per search, with enrichment concurrent
(archsmith's default) and, as the reference, one hit at a time. Then, with no network (a closed
port on 127.0.0.1), the time until search reports the failure, against huggingface_hub's own
retrying `list_models` as the reference. Results go to docs/benchmarks.md.

    python benchmarks/bench_hub.py [--repeats 7] [--offline-repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from docs_section import write_section

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


class Patch:
    """Minimal stand-in for pytest's monkeypatch (setattr / setenv), undone by undo()."""

    def __init__(self):
        self.undos = []

    def setattr(self, obj, name, value):
        old = getattr(obj, name)
        self.undos.append(lambda: setattr(obj, name, old))
        setattr(obj, name, value)

    def setenv(self, name, value):
        old = os.environ.get(name)
        self.undos.append(lambda: os.environ.__setitem__(name, old) if old is not None else os.environ.pop(name, None))
        os.environ[name] = value

    def delenv(self, name, raising=True):
        old = os.environ.pop(name, None)
        if old is not None:
            self.undos.append(lambda: os.environ.__setitem__(name, old))

    def undo(self):
        for fn in reversed(self.undos):
            fn()


def repos():
    from hubserver import Repo, make_safetensors

    from archsmith.estimate import model_tensors
    from archsmith.hfconfig import hf_from_spec
    from archsmith.spec import ArchitectureSpec

    out = []
    for i in range(50):
        spec = ArchitectureSpec(hidden_size=64 * (1 + i % 8), num_layers=2 + i % 5, num_heads=4, num_kv_heads=2,
                                ffn_size=256, vocab_size=32000)
        files = {"config.json": json.dumps(hf_from_spec(spec)).encode(), "README.md": b"---\nlicense: apache-2.0\n---\n# m\n"}
        info = {"pipeline_tag": "text-generation", "library_name": "transformers", "downloads": 1000 - i, "likes": i}
        if i < 45:
            files["model.safetensors"] = make_safetensors({t.name: ("BF16", t.shape) for t in model_tensors(spec)}, virtual=True)
        if 35 <= i < 45:
            info["safetensors"] = None  # listing without the summary: read the header
        out.append(Repo(f"bench/model-{i:02d}", info, files))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--offline-repeats", type=int, default=3, help="no-network runs (the reference takes ~24 s each)")
    args = parser.parse_args()
    if args.repeats < 1 or args.offline_repeats < 1:
        parser.error("--repeats and --offline-repeats must be at least 1")
    from importlib.metadata import version

    from hubserver import FakeHub, use_fake_hub

    from archsmith import hub

    rows = {}
    with FakeHub(repos()) as fake, tempfile.TemporaryDirectory() as home:
        patch = Patch()
        use_fake_hub(patch, home, fake)
        for label, workers, latency in (("concurrent (8 workers), loopback", 8, 0.0),
                                        ("reference: one hit at a time, loopback", 1, 0.0),
                                        ("concurrent (8 workers), 30 ms per request", 8, 0.03),
                                        ("reference: one hit at a time, 30 ms per request", 1, 0.03)):
            hub.ENRICH_WORKERS, fake.latency = workers, latency
            times, counts = [], []
            for _ in range(args.repeats):
                fake.clear()
                start = time.perf_counter()
                result = hub.search(query="bench", limit=50, gpu="t4")
                times.append(time.perf_counter() - start)
                counts.append(len(fake.requests))
                assert len(result["results"]) == 50 and all(r["params"] and r["meets_constraints"] for r in result["results"])
                assert fake.full_downloads() == []
            rows[label] = (statistics.median(times), statistics.median(counts), min(counts), max(counts))
        patch.undo()
    ours, library = no_network(args.offline_repeats)
    conc, ref = rows["concurrent (8 workers), 30 ms per request"], rows["reference: one hit at a time, 30 ms per request"]
    lines = [
        "## Hub search with enrichment (50 hits, local fake Hub)",
        "",
        f"`python benchmarks/bench_hub.py --repeats {args.repeats}` — machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, huggingface_hub {version('huggingface_hub')}. Server: tests/hubserver.py on 127.0.0.1.",
        "",
        "Rows with 30 ms per request add that delay to every answer of the server, as a network round trip would.",
        "35 hits carry the Hub's safetensors summary in the listing, 10 need a header read (HEAD + ranged GET), 5 have no",
        "weights (config.json -> estimator). No weight file is downloaded (checked on every run). The first repeat fills",
        "the HF cache with the 5 config.json files; later repeats revalidate them with one HEAD each.",
        "",
        "| enrichment | median time (ms) | HTTP requests (median, min-max) | requests per hit |",
        "|---|---:|---:|---:|",
    ]
    for label, (t, n, lo, hi) in rows.items():
        lines.append(f"| {label} | {1000 * t:.0f} | {n:.0f} ({lo}-{hi}) | {n / 50:.2f} |")
    lines += ["", f"With a simulated 30 ms round trip per request (`FakeHub.latency`), concurrent enrichment is "
              f"{ref[0] / conc[0]:.1f}x faster than one hit at a time (medians); on loopback there is nothing to overlap. "
              "Targets (issue #5): <= 2 requests per hit, < 2 s in total.",
              "", f"### No network: time until `search` reports it (closed port on 127.0.0.1, {args.offline_repeats} runs)", "",
              "| client | median time (ms) | warnings logged per run |", "|---|---:|---:|",
              f"| archsmith `hub.search` (one line: cannot reach the Hub) | {1000 * ours[0]:.1f} | {ours[1]} |",
              f"| reference: `HfApi.list_models` with huggingface_hub's retries | {1000 * library[0]:.0f} | {library[1]} |", "",
              "Inside archsmith's Hub calls the client does not retry a connection that cannot be made or a timed-out request; "
              "left alone it waits 1 + 2 + 4 + 8 + 8 s between six attempts and logs each."]
    print(write_section("bench_hub", "\n".join(lines)))


def no_network(repeats: int) -> tuple[tuple[float, int], tuple[float, int]]:
    """(median seconds, warnings logged per run) for archsmith's search and for the bare client, against a closed port."""
    import logging
    import socket

    from huggingface_hub import HfApi

    from archsmith import hub

    class Count(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.n = 0

        def emit(self, record):
            self.n += 1

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    logger = logging.getLogger("huggingface_hub")
    rows = []
    for run in (lambda: hub.search(query="x", endpoint=url, token=False),
                lambda: list(HfApi(endpoint=url, token=False).list_models(search="x", limit=5))):
        times, counts = [], []
        for _ in range(repeats):
            count = Count()
            logger.addHandler(count)
            start = time.perf_counter()
            try:
                run()
                raise AssertionError("a closed port answered")
            except Exception as exc:  # ours raises HubError, the bare client httpx2.ConnectError
                assert "cannot reach the Hub" in str(exc) or "refused" in str(exc), exc
            times.append(time.perf_counter() - start)
            logger.removeHandler(count)
            counts.append(count.n)
        rows.append((statistics.median(times), int(statistics.median(counts))))
    closed.close()
    return rows[0], rows[1]


if __name__ == "__main__":
    main()
