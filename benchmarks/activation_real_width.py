"""The activation estimate at real widths: every family's published config, cut to a few layers.

For each model type, the smallest published config in `src/data/reference_architectures/` keeps its real
widths (hidden size, heads, head dim, FFN and expert widths, vocabulary) and transformers' defaults (dropout
as the config sets it, the activation it names, the default attention kernel the estimator assumes, the
default experts kernel); only depth is cut to LAYERS (every per-layer list cut with it, dense-first layers
to one) and the experts to at most EXPERTS (tokens still choose top-k: per-token activations do not grow
with the number of experts). Activations grow linearly with depth, so the error per layer is the error of
the full model up to the embedding and head, which are included. The bytes autograd saves in a training
forward (model.train(), bf16, batch x seq = 1 x SEQ) are measured with `saved_tensors_hooks` and compared
with `archsmith.estimate.activation_bytes`. GPT-2 124M is also measured whole, in fp32 at seq 1024.

    python benchmarks/activation_real_width.py              # measure (a GPU: minutes per family on CPU)
    python benchmarks/activation_real_width.py --from-docs  # re-estimate the recorded measurements
"""

from __future__ import annotations

import gc
import json
import platform
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_memory import measure_saved  # noqa: E402

from archsmith import families  # noqa: E402
from archsmith.estimate import activation_bytes, default_attention  # noqa: E402
from archsmith.hfconfig import spec_from_hf  # noqa: E402
from docs_section import write_section  # noqa: E402

REFERENCES = ROOT / "src" / "data" / "reference_architectures"
LAYERS = 4  # keeps every layer pattern of the registry (alternating, period 4, NoPE every 4th) at least once
EXPERTS = 8  # routed experts kept per MoE layer (at least top-k)
SEQ = 512
DENSE_FIRST = ("first_k_dense_replace",)  # dense-first layer counts: one dense layer, then MoE
WHOLE = ("openai-community__gpt2.json", "fp32", 1024)  # the model of the issue, whole
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # real widths take minutes per family on a 2-core CPU


def smallest_configs() -> dict[str, tuple[str, dict]]:
    """model_type -> (file, config) of the published config with the smallest hidden size."""
    best: dict[str, tuple[str, dict]] = {}
    for path in sorted(REFERENCES.glob("*.json")):
        cfg = json.loads(path.read_text())
        cfg = cfg.get("text_config", cfg) if cfg.get("model_type") not in families.NAMES else cfg
        name = cfg.get("model_type")
        if name in families.NAMES and (name not in best or spec_from_hf(cfg).hidden_size < spec_from_hf(best[name][1]).hidden_size):
            best[name] = (path.name, cfg)
    return best


def cut(cfg: dict) -> dict:
    """The config at LAYERS layers and at most EXPERTS routed experts."""
    fam = families.get(cfg["model_type"])
    depth = fam.keys.get("num_layers") or "num_hidden_layers"
    layers = cfg[depth]
    out = {k: (v[:LAYERS] if isinstance(v, list) and len(v) == layers else v) for k, v in cfg.items()}
    out[depth] = LAYERS
    experts_key = fam.keys.get("moe.num_experts")
    if experts_key and out.get(experts_key):
        top_k = out.get(fam.keys.get("moe.top_k") or "", 1)
        out[experts_key] = min(out[experts_key], max(EXPERTS, top_k))
        for key in ("n_group", "topk_group"):  # grouped routing: one group of the kept experts
            if key in out:
                out[key] = 1
    for key in DENSE_FIRST:
        if key in out:
            out[key] = min(out[key], 1)
    return out


def estimated(cfg: dict, dtype: str, seq: int) -> tuple[int, str, bool]:
    """(bytes, attention kernel, marked exact) of the estimate for batch 1 at the family's default kernel."""
    spec = spec_from_hf(cfg)
    acts = activation_bytes(spec, 1, seq, dtype, default_attention(spec), False)
    return acts["total"], acts["attention"], acts["exact"]


def measure(cfg: dict, dtype: str, seq: int) -> tuple[int, int, str, bool]:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = spec_from_hf(cfg)
    attn = default_attention(spec)
    config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")})
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    model.train()
    ids = torch.randint(3, spec.vocab_size, (1, seq), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    real = measure_saved(model, ids)
    model.to("meta")  # frees the weights even where something still refers to the module
    del model
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return (real, *estimated(cfg, dtype, seq))


def config_of(name: str) -> tuple[str, dict, str, int]:
    """(source, config, dtype, seq) of a row: a family's smallest published config cut to LAYERS, or "whole" (GPT-2)."""
    if name == "whole":
        file, dtype, seq = WHOLE
        return file.removesuffix(".json").replace("__", "/") + " (whole)", json.loads((REFERENCES / file).read_text()), dtype, seq
    file, cfg = smallest_configs()[name]
    return file.removesuffix(".json").replace("__", "/"), cut(cfg), "bf16", SEQ


def row(name: str, real: int | None = None) -> tuple:
    """One row (family, config, shape, dtype, seq, attention, measured, estimated, exact); `real` skips the measurement."""
    src, cfg, dtype, seq = config_of(name)
    if real is None:
        real, est, attn, exact = measure(cfg, dtype, seq)
    else:
        est, attn, exact = estimated(cfg, dtype, seq)
    spec = spec_from_hf(cfg)
    return (cfg["model_type"], src, f"{spec.hidden_size} x {spec.num_layers}", dtype, seq, attn, real, est, exact)


def from_docs() -> None:
    """Re-estimate the rows docs/benchmarks.md holds against their recorded measurements (no model is built)."""
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    section = doc[doc.index("<!-- activation_real_width:begin"):doc.index("<!-- activation_real_width:end")]
    header = re.search(r"^`python benchmarks/activation_real_width.py` — (.*?)\.$", section, re.M).group(1)
    header = header.split(", estimates recomputed")[0]
    families.describe(re.search(r"transformers ([\d.]+)", header).group(1))  # the code the measurements ran
    rows = []
    for line in section.splitlines():
        m = re.match(r"\| (\w+) \| [^|]*?( \(whole\))? \| [^|]* \| \w+ \| \d+ \| \w+ \| ([\d,.]+) \|", line)
        if m:
            rows.append(row("whole" if m.group(2) else m.group(1), round(float(m.group(3).replace(",", "")) * 2**20)))
            print(json.dumps(rows[-1]), flush=True)
    print(write_section("activation_real_width", table(rows, header, "estimates recomputed with the current code against "
                                                       "these recorded measurements (`--from-docs`)")))


def main() -> None:
    import transformers

    if sys.argv[1:] == ["--from-docs"]:
        return from_docs()
    rows = []
    for name in sys.argv[1:] or [*sorted(smallest_configs()), "whole"]:
        try:
            rows.append(row(name))
        except Exception as exc:  # a model type this transformers cannot build: named, not hidden
            print(name, "failed:", type(exc).__name__, str(exc)[:300], flush=True)
            continue
        print(json.dumps(rows[-1]), flush=True)
    machine = torch.cuda.get_device_name() if DEVICE == "cuda" else platform.machine()
    versions = f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    if not sys.argv[1:]:  # the whole table; a subset only prints its rows
        print(write_section("activation_real_width", table(rows, machine, versions)))


def table(rows: list[tuple], machine: str, versions: str) -> str:
    """The docs section from measured rows (family, config, shape, dtype, seq, attention, measured, estimated, exact)."""
    err = [abs(e - r) / r for *_, r, e, _ in rows]
    held = [x for x, row in zip(err, rows) if row[-1]]
    lines = [
        "## Activation memory at real widths: estimate vs measurement",
        "",
        f"`python benchmarks/activation_real_width.py` — {machine}, {versions}.",
        "",
        f"Each family's smallest published config with its real widths, cut to {LAYERS} layers and at most {EXPERTS} routed "
        f"experts, at least top-k (per-token activations depend on top-k, not on the number of experts); transformers' defaults: "
        f"model.train() (dropout as configured), the default attention kernel, the default experts kernel; batch 1. "
        "Measured: distinct storages autograd saves in the forward (`saved_tensors_hooks`), parameters excluded.",
        "",
        f"Worst error: **{100 * max(err):.1f}%** ({rows[err.index(max(err))][0]}); {len(held)} of {len(rows)} rows are marked "
        "exact (`activations_exact: true`)" + (f", worst **{100 * max(held):.1f}%**" if held and len(held) < len(rows) else "")
        + ". A row not marked exact carries the reason (`activations_note`) in `estimate`'s output and a line in the CLI's table.",
        "",
        "| family | config | hidden x layers | dtype | seq | attention | measured MiB | estimated MiB | error | marked exact |",
        "|---|---|---|---|---:|---|---:|---:|---:|---|",
    ]
    for (name, src, shape, dtype, seq, attn, real, est, exact), e in zip(rows, err):
        lines.append(f"| {name} | {src} | {shape} | {dtype} | {seq} | {attn} | {real / 2**20:,.1f} | {est / 2**20:,.1f} | "
                     f"{100 * e:.1f}% | {'yes' if exact else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
