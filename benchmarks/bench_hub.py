"""Hub search with enrichment against the local fake Hub (tests/hubserver.py), real huggingface_hub client.

50 hits: 35 whose listing carries the Hub's safetensors summary (no extra request), 10 that need a
safetensors header read (HEAD + one ranged GET), 5 without weights (config.json through our
estimator). Measures total time and HTTP requests per search, with enrichment concurrent
(archsmith's default) and, as the reference, one hit at a time. Results go to docs/benchmarks.md.

    python benchmarks/bench_hub.py [--repeats 7]
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
    args = parser.parse_args()
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
                assert len(result["results"]) == 50 and all(r["params"] for r in result["results"])
                assert fake.full_downloads() == []
            rows[label] = (statistics.median(times), statistics.median(counts), min(counts), max(counts))
        patch.undo()
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
              "Targets (issue #5): <= 2 requests per hit, < 2 s in total."]
    print(write_section("bench_hub", "\n".join(lines)))


if __name__ == "__main__":
    main()
