"""Students from a teacher: fewer layers and narrower widths, initialised from the teacher's weights.

Families: BERT-style encoders (transformers' `BertModel`, what `AutoModel` loads) and decoder LMs
(llama, mistral, qwen2, qwen3 through `archsmith.network`, saved so `AutoModelForCausalLM` loads them).

v1 reaches `1 - reduction` of the teacher's parameters by depth and width:
- depth: layers are selected, not averaged; the first and last are kept and the rest are chosen denser
  early (positions (i / (k - 1)) ** 1.5), so later layers are reduced more than early ones. A
  transformers config has one width per model, so the later-more rule acts through this selection;
- width: residual channels (hidden size), attention heads and FFN neurons are pruned by their
  activation importance on calibration text (mean |activation|, for heads and neurons times the norm of
  the output weights they feed), each layer keeping its own most important heads and neurons.
v2 is for operational efficiency on top of v1's shape:
- decoders: grouped-query attention (MHA -> GQA, or MQA with kv_heads=1): each new KV head is the mean
  of the teacher KV heads of its query group (Ainslie et al. 2023), so the KV cache shrinks by
  heads / kv_heads; the parameters freed go to the FFN;
- encoders: `BertModel` has no grouped KV heads (head size is hidden / heads) and an encoder keeps no
  KV cache, so v2 keeps the BERT layout AutoModel loads and changes what export and quantisation see:
  tanh-GELU (`gelu_new`, one fused op in ONNX Runtime) instead of erf-GELU.
Widths are multiples of 64 for real models (GEMM and int8 kernel tiles; 16 for tiny test models).
The student is the tokenizer's and the input/output's twin of the teacher; it is not trained here
(distillation trains it). `fidelity` measures how close it is: encoders by agreement of sentence-embedding
similarities with the teacher's on held-out text, LMs by KL to the teacher and perplexity.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from archsmith import families
from archsmith.errors import ArchsmithError

ENCODERS = ("bert",)
DECODERS = families.with_parity("both")  # the model types network.py loads and saves with logits equal to transformers
STRATEGIES = ("depth", "width", "both")
TOLERANCE = 0.02  # a student's reduction must land within 2 percentage points of the one asked for
DEPTH_CURVE = 1.5  # > 1 keeps early layers denser than late ones when selecting layers
DATA = Path(__file__).resolve().parents[1] / "data"
CALIBRATION = DATA / "calibration.txt"  # 80 English sentences for activation importance
HELDOUT = DATA / "heldout.txt"  # 40 sentences (paraphrase pairs and unrelated ones) for fidelity
MAX_TEXT_LINES = 5000  # calibration / held-out files are read up to this many lines
MAX_TOKENS = 128  # tokens per calibration or held-out line
LATENCY_GRID = ((1, 32), (1, 128), (8, 128))  # (batch, seq) points of the teacher-vs-student latency table
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model")


@dataclass
class Shape:
    """The student's architecture as choices about the teacher's: which layers, how wide."""

    layers: list[int]  # teacher layer indices kept, in order
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    params: int = 0


@dataclass
class Teacher:
    family: str  # model_type
    model: Any  # BertModel or network.CausalLM, eval mode
    config: dict  # config.json
    path: Path
    shape: Shape
    tokenizer: Any | None


# ---- the teacher ----------------------------------------------------------------------------------

def load_teacher(path: str | Path) -> Teacher:
    """Load a BERT-style encoder (transformers) or a llama/mistral/qwen2/qwen3 decoder (archsmith.network)."""
    import torch

    from archsmith.hfconfig import read_config

    path = Path(path)
    if not path.is_dir():
        raise ArchsmithError("model", f"must be a model directory with config.json and safetensors weights; got {path}")
    cfg = read_config(path)
    family = cfg.get("model_type")
    if family in ENCODERS:
        from transformers import AutoModel

        from archsmith.analyze import quiet_transformers

        quiet_transformers()
        if not any(path.glob("*.safetensors")):
            raise ArchsmithError("model", f"{path} has no safetensors weights (only safetensors are read)")
        model = AutoModel.from_pretrained(path, dtype=torch.float32, use_safetensors=True, attn_implementation="sdpa")
        c = model.config
        shape = Shape(list(range(c.num_hidden_layers)), c.hidden_size, c.num_attention_heads, c.num_attention_heads,
                      c.hidden_size // c.num_attention_heads, c.intermediate_size)
    elif family in DECODERS:
        from archsmith.network import CausalLM

        try:
            model = CausalLM.from_pretrained(path, dtype=torch.float32)
        except ArchsmithError as exc:  # missing or mismatched weights: the teacher directory is what is wrong
            raise ArchsmithError("model", str(exc).split(": ", 1)[-1]) from None
        s = model.spec
        if s.moe is not None:
            raise ArchsmithError("model", "mixture-of-experts teachers are not compressed (prune experts first)")
        gaps = _layout_gaps(s)
        if gaps:
            raise ArchsmithError("model", f"compress prunes Llama-layout decoder blocks; this {family} model has {', '.join(gaps)}")
        shape = Shape(list(range(s.num_layers)), s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim, s.ffn_size)
    else:
        raise ArchsmithError("model_type", f"compress supports {', '.join(ENCODERS + DECODERS)}; got {family!r}")
    shape.params = sum(p.numel() for p in model.parameters())
    return Teacher(family, model.eval(), cfg, path, shape, _tokenizer(path))


def _layout_gaps(spec) -> list[str]:
    """What a decoder has beyond the blocks `_decoder_student` slices: pre-norm RMSNorm, separate q/k/v/o and gated
    gate/up/down projections without output or MLP biases, QK-norm per head at most, standard attention."""
    checks = ((spec.mla is not None, "multi-head latent attention"), (spec.norm != "rmsnorm", f"{spec.norm} norms"),
              (spec.norm_placement != "pre", f"{spec.norm_placement} norm placement"),
              (spec.fused_qkv or spec.fused_gate_up, "fused projections"), (not spec.gated, "a non-gated MLP"),
              (spec.o_bias or spec.mlp_bias, "output or MLP biases"), (spec.qk_norm not in ("none", "head"), f"{spec.qk_norm} QK-norm"))
    return [text for failed, text in checks if failed]


def _tokenizer(path: Path):
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ArchsmithError("model", f"{path} has tokenizer files transformers cannot read: {str(exc)[:160]}") from None


# ---- parameter counts of candidate shapes -------------------------------------------------------

def count_params(teacher: Teacher, shape: Shape) -> int:
    """Exact parameters of the student `shape` of `teacher` (tests hold it against the built model)."""
    h, n, d, f, L = shape.hidden, shape.heads, shape.head_dim, shape.ffn, len(shape.layers)
    if teacher.family in ENCODERS:
        c = teacher.config
        embed = (c["vocab_size"] + c.get("max_position_embeddings", 512) + c.get("type_vocab_size", 2)) * h + 2 * h
        a = n * d
        layer = 3 * (h * a + a) + (a * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
        pooler = h * h + h if teacher.model.pooler is not None else 0
        return embed + L * layer + pooler
    from archsmith.estimate import count_params as spec_params

    return spec_params(_student_spec(teacher, shape))["total"]


def _student_spec(teacher: Teacher, shape: Shape):
    spec = teacher.model.spec
    types = tuple(spec.layer_types[i] for i in shape.layers) if spec.layer_types else None
    nope = tuple(j for j, i in enumerate(shape.layers) if i in spec.nope_layers)  # kept NoPE layers, renumbered
    return spec.replace(hidden_size=shape.hidden, num_layers=len(shape.layers), num_heads=shape.heads,
                        num_kv_heads=shape.kv_heads, head_dim=shape.head_dim, ffn_size=shape.ffn, layer_types=types,
                        nope_layers=nope)


def keep_layers(total: int, keep: int) -> list[int]:
    """`keep` of `total` layer indices: first and last kept, the rest denser early (later layers reduced more)."""
    if keep >= total:
        return list(range(total))
    if keep == 1:
        return [0]
    chosen: list[int] = []
    for i in range(keep):
        pos = round((total - 1) * (i / (keep - 1)) ** DEPTH_CURVE)
        low = chosen[-1] + 1 if chosen else 0
        chosen.append(min(max(pos, low), total - (keep - i)))
    return chosen


def _step(width: int) -> int:
    """Width granularity: 64 for real models (GEMM / int8 tiles), 16 for tiny test models."""
    return 64 if width >= 512 else 16


def _kv_heads(heads: int, wanted: int | None) -> int:
    """v2's KV heads: `wanted`, else heads / 4; always a divisor of heads, at least 1."""
    target = wanted or max(1, heads // 4)
    return max(k for k in range(1, heads + 1) if heads % k == 0 and k <= target)


def plan(teacher: Teacher, reduction: float, strategy: str = "both", v2: bool = False,
         kv_heads: int | None = None) -> Shape:
    """The student shape whose parameters are closest to `(1 - reduction)` of the teacher's.

    Raises ArchsmithError naming the nearest feasible reductions when none lands within TOLERANCE.
    """
    if strategy not in STRATEGIES:
        raise ArchsmithError("strategy", f"must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if not isinstance(reduction, (int, float)) or not 0 < reduction < 1:
        raise ArchsmithError("reduction", f"must be a share of parameters to remove in (0, 1), e.g. 0.5; got {reduction!r}")
    if kv_heads is not None and not v2:
        raise ArchsmithError("kv_heads", "grouped KV heads are a v2 change: pass --v2 too")
    if kv_heads is not None and teacher.family in ENCODERS:
        raise ArchsmithError("kv_heads", "BertModel has no grouped KV heads; v2 for encoders keeps all heads")
    t = teacher.shape
    group = t.heads // t.kv_heads  # query heads per KV head in the teacher: heads are pruned in whole groups
    unit_count = t.kv_heads
    target = (1 - reduction) * t.params
    fstep = _step(t.ffn)
    depths = range(1, len(t.layers) + 1) if strategy != "width" else [len(t.layers)]
    units = range(1, unit_count + 1) if strategy != "depth" else [unit_count]
    candidates: list[Shape] = []
    for L in depths:
        for u in units:
            heads = u * group
            hidden = _hidden_for(teacher, heads)
            if hidden is None:
                continue
            kv = _kv_heads(heads, kv_heads) if v2 and teacher.family in DECODERS else u
            shape = Shape(keep_layers(len(t.layers), L), hidden, heads, kv, t.head_dim, t.ffn)
            if strategy != "depth":
                shape.ffn = _solve_ffn(teacher, shape, target, fstep)
            shape.params = count_params(teacher, shape)
            candidates.append(shape)
    reached = [s for s in candidates if abs((1 - s.params / t.params) - reduction) <= TOLERANCE]
    if not reached:
        raise ArchsmithError("reduction", _unreachable(candidates, t, reduction, strategy))

    def balance(s: Shape) -> tuple[float, float]:
        """Spread of the log shrink factors that the strategy varies (depth, width, FFN), then closeness."""
        factors = {"depth": math.log(len(s.layers) / len(t.layers)), "width": math.log(s.hidden / t.hidden),
                   "ffn": math.log(s.ffn / t.ffn)}
        varied = {"both": ("depth", "width", "ffn"), "width": ("width", "ffn"), "depth": ("depth",)}[strategy]
        values = [factors[k] for k in varied]
        return (round(max(values) - min(values), 2), abs(s.params - target))

    return min(reached, key=balance)


def _hidden_for(teacher: Teacher, heads: int) -> int | None:
    """Residual width that goes with `heads`: BERT ties it (heads x head_dim); decoders scale it with the heads."""
    t = teacher.shape
    if teacher.family in ENCODERS:
        return heads * t.head_dim
    step = _step(t.hidden)
    hidden = max(step, round(t.hidden * heads / t.heads / step) * step)
    if families.get(teacher.model.spec.model_type).heads_divide_hidden and hidden % heads:  # the config class requires it
        hidden = max(heads, round(hidden / heads) * heads)
    return min(hidden, t.hidden)


def _solve_ffn(teacher: Teacher, shape: Shape, target: float, step: int) -> int:
    """FFN width (a multiple of `step`, at most the teacher's) that brings the parameters closest to `target`."""
    t = teacher.shape
    lo = Shape(shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.head_dim, step)
    hi = Shape(shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.head_dim, 2 * step)
    p_lo, p_hi = count_params(teacher, lo), count_params(teacher, hi)
    per_step = p_hi - p_lo  # parameters are linear in the FFN width
    steps = round((target - p_lo) / per_step) + 1
    return int(min(max(steps, 1) * step, t.ffn // step * step if t.ffn >= step else t.ffn))


def _unreachable(candidates: list[Shape], t: Shape, reduction: float, strategy: str) -> str:
    reached = sorted({round(1 - s.params / t.params, 3) for s in candidates})
    below = [r for r in reached if r < reduction]
    above = [r for r in reached if r > reduction]
    nearest = [str(x) for x in (below[-1:] + above[:1])]
    how = {"depth": "removing layers", "width": "narrowing the layers", "both": "removing and narrowing layers"}[strategy]
    return (f"{reduction} is out of reach with --strategy {strategy}: {how} removes between {reached[0]:.1%} and "
            f"{reached[-1]:.1%} of the parameters in steps; nearest feasible reductions: {' or '.join(nearest)}"
            + ("" if strategy == "both" else "; --strategy both combines depth and width"))


# ---- activation importance ----------------------------------------------------------------------

def read_lines(path: str | Path | None, default: Path, field: str) -> list[str]:
    path = Path(path) if path is not None else default
    if not path.is_file():
        raise ArchsmithError(field, f"no such text file: {path}")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()[:MAX_TEXT_LINES]]
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchsmithError(field, f"cannot read {path} as UTF-8 text: {exc}") from None
    lines = [line for line in lines if line]
    if len(lines) < 4:
        raise ArchsmithError(field, f"{path} needs at least 4 non-empty lines of text, has {len(lines)}")
    return lines


def token_batches(teacher: Teacher, texts: list[str], seed: int = 0) -> list[dict]:
    """One {input_ids, attention_mask} per text (batch 1, no padding); random ids when there is no tokenizer."""
    import torch

    if teacher.tokenizer is not None:
        return [dict(teacher.tokenizer(text, return_tensors="pt", truncation=True, max_length=MAX_TOKENS)) for text in texts]
    gen = torch.Generator().manual_seed(seed)
    vocab = teacher.config["vocab_size"]
    out = []
    for text in texts:
        ids = torch.randint(0, vocab, (1, min(MAX_TOKENS, max(8, len(text.split())))), generator=gen)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


def _blocks(teacher: Teacher):
    """Per layer: (attention output projection, FFN down projection) - the Linear layers importance reads."""
    m = teacher.model
    if teacher.family in ENCODERS:
        return [(layer.attention.output.dense, layer.output.dense) for layer in m.encoder.layer]
    return [(layer.self_attn.o_proj, layer.mlp.down_proj) for layer in m.model.layers]


def _residual_modules(teacher: Teacher):
    m = teacher.model
    if teacher.family in ENCODERS:
        return [m.embeddings, *m.encoder.layer]
    return [m.model.embed_tokens, *m.model.layers]


def importance(teacher: Teacher, batches: list[dict]) -> dict[str, Any]:
    """Activation importance on calibration batches.

    hidden (h,): mean |x| of each residual channel over the embeddings and every layer output;
    heads [layer](H,): mean norm of each head's contribution through the output projection;
    neurons [layer](f,): mean |a_j| of each FFN activation times the norm of its down-projection column.
    """
    import torch

    t = teacher.shape
    d = t.head_dim
    blocks = _blocks(teacher)
    hidden = torch.zeros(t.hidden, dtype=torch.float64)
    heads = [torch.zeros(t.heads, dtype=torch.float64) for _ in blocks]
    neurons = [torch.zeros(t.ffn, dtype=torch.float64) for _ in blocks]
    tokens = 0
    handles = []

    def on_residual(module, args, output):
        x = output[0] if isinstance(output, tuple) else output
        hidden.add_(x.detach().abs().flatten(0, -2).sum(0).double())

    def on_attention(i):
        def hook(module, args):
            x = args[0].detach()  # (B, S, H * d): the heads' outputs, concatenated
            w = module.weight.detach().view(module.weight.shape[0], t.heads, d)  # (out, H, d)
            contrib = torch.einsum("bshd,ohd->bsho", x.view(*x.shape[:2], t.heads, d), w)
            heads[i].add_(contrib.norm(dim=-1).flatten(0, 1).sum(0).double())
        return hook

    def on_ffn(i):
        def hook(module, args):
            neurons[i].add_(args[0].detach().abs().flatten(0, -2).sum(0).double())
        return hook

    for module in _residual_modules(teacher):
        handles.append(module.register_forward_hook(on_residual))
    for i, (attn_out, ffn_down) in enumerate(blocks):
        handles.append(attn_out.register_forward_pre_hook(on_attention(i)))
        handles.append(ffn_down.register_forward_pre_hook(on_ffn(i)))
    try:
        with torch.no_grad():
            for batch in batches:
                _forward(teacher.family, teacher.model, batch)
                tokens += int(batch["input_ids"].numel())
    finally:
        for h in handles:
            h.remove()
    for i, (_, ffn_down) in enumerate(blocks):
        neurons[i] = neurons[i] / tokens * ffn_down.weight.detach().norm(dim=0).double()
        heads[i] = heads[i] / tokens
    return {"hidden": hidden / (tokens * (len(blocks) + 1)), "heads": heads, "neurons": neurons, "tokens": tokens}


def _forward(family: str, model, batch: dict):
    if family in ENCODERS:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return model(batch["input_ids"]).logits


def _top(scores, k: int):
    import torch

    return torch.sort(torch.topk(scores, k).indices).values


# ---- building the student ------------------------------------------------------------------------

def build_student(teacher: Teacher, shape: Shape, scores: dict[str, Any], v2: bool = False):
    """The student module with weights sliced (and for v2 KV heads mean-pooled) from the teacher's."""
    import torch

    t = teacher.shape
    channels = _top(scores["hidden"], shape.hidden) if shape.hidden < t.hidden else torch.arange(t.hidden)
    group = t.heads // t.kv_heads
    plans = []
    for old in shape.layers:
        group_scores = scores["heads"][old].view(t.kv_heads, group).sum(-1)
        kept_groups = _top(group_scores, shape.heads // group)
        q_heads = torch.cat([torch.arange(g * group, (g + 1) * group) for g in kept_groups.tolist()])
        neurons = _top(scores["neurons"][old], shape.ffn) if shape.ffn < t.ffn else torch.arange(t.ffn)
        plans.append((old, q_heads, kept_groups, neurons))
    state = teacher.model.state_dict()
    if teacher.family in ENCODERS:
        return _bert_student(teacher, shape, state, channels, plans, v2)
    return _decoder_student(teacher, shape, state, channels, plans)


def _rows(heads, head_dim: int):
    import torch

    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads.tolist()])


def _bert_student(teacher: Teacher, shape: Shape, state: dict, channels, plans, v2: bool):
    from transformers import AutoConfig, AutoModel

    cfg = {k: v for k, v in teacher.config.items() if not k.startswith("_") and k != "transformers_version"}
    cfg.update(hidden_size=shape.hidden, num_hidden_layers=len(shape.layers), num_attention_heads=shape.heads,
               intermediate_size=shape.ffn, architectures=["BertModel"])
    if v2 and cfg.get("hidden_act") == "gelu":
        cfg["hidden_act"] = "gelu_new"
    config = AutoConfig.for_model(**cfg)
    config._attn_implementation = "sdpa"
    student = AutoModel.from_config(config).eval()
    c = channels
    new = {}
    for key in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        new[f"embeddings.{key}.weight"] = state[f"embeddings.{key}.weight"][:, c]
    for part in ("weight", "bias"):
        new[f"embeddings.LayerNorm.{part}"] = state[f"embeddings.LayerNorm.{part}"][c]
    for j, (old, q_heads, _, neurons) in enumerate(plans):
        src, dst = f"encoder.layer.{old}.", f"encoder.layer.{j}."
        rows = _rows(q_heads, shape.head_dim)
        for proj in ("query", "key", "value"):
            new[f"{dst}attention.self.{proj}.weight"] = state[f"{src}attention.self.{proj}.weight"][rows][:, c]
            new[f"{dst}attention.self.{proj}.bias"] = state[f"{src}attention.self.{proj}.bias"][rows]
        new[f"{dst}attention.output.dense.weight"] = state[f"{src}attention.output.dense.weight"][c][:, rows]
        new[f"{dst}attention.output.dense.bias"] = state[f"{src}attention.output.dense.bias"][c]
        new[f"{dst}intermediate.dense.weight"] = state[f"{src}intermediate.dense.weight"][neurons][:, c]
        new[f"{dst}intermediate.dense.bias"] = state[f"{src}intermediate.dense.bias"][neurons]
        new[f"{dst}output.dense.weight"] = state[f"{src}output.dense.weight"][c][:, neurons]
        new[f"{dst}output.dense.bias"] = state[f"{src}output.dense.bias"][c]
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            for part in ("weight", "bias"):
                new[f"{dst}{norm}.{part}"] = state[f"{src}{norm}.{part}"][c]
    if student.pooler is not None:
        new["pooler.dense.weight"] = state["pooler.dense.weight"][c][:, c]
        new["pooler.dense.bias"] = state["pooler.dense.bias"][c]
    _load(student, new)
    return student


def _decoder_student(teacher: Teacher, shape: Shape, state: dict, channels, plans):
    import torch

    from archsmith.network import CausalLM

    spec = _student_spec(teacher, shape)
    t = teacher.shape
    group = t.heads // t.kv_heads
    new_group = shape.heads // shape.kv_heads  # query heads per KV head in the student
    c = channels
    new = {"model.embed_tokens.weight": state["model.embed_tokens.weight"][:, c], "model.norm.weight": state["model.norm.weight"][c]}
    if not spec.tie_embeddings:
        new["lm_head.weight"] = state["lm_head.weight"][:, c]
    d = shape.head_dim
    for j, (old, q_heads, kept_groups, neurons) in enumerate(plans):
        src, dst = f"model.layers.{old}.", f"model.layers.{j}."
        rows = _rows(q_heads, d)
        new[f"{dst}self_attn.q_proj.weight"] = state[f"{src}self_attn.q_proj.weight"][rows][:, c]
        new[f"{dst}self_attn.o_proj.weight"] = state[f"{src}self_attn.o_proj.weight"][c][:, rows]
        # the teacher KV head of each kept query head, then the mean over each student group
        kv_of_q = q_heads // group
        for proj in ("k_proj", "v_proj"):
            for part in ("weight", "bias"):
                key = f"{src}self_attn.{proj}.{part}"
                if key not in state:
                    continue
                w = state[key].view(t.kv_heads, d, *state[key].shape[1:])
                pooled = []
                for g in range(shape.kv_heads):
                    members = torch.unique(kv_of_q[g * new_group:(g + 1) * new_group])
                    pooled.append(w[members].mean(0))
                w = torch.stack(pooled).flatten(0, 1)
                new[f"{dst}self_attn.{proj}.{part}"] = w[:, c] if part == "weight" else w
        if f"{src}self_attn.q_proj.bias" in state:
            new[f"{dst}self_attn.q_proj.bias"] = state[f"{src}self_attn.q_proj.bias"][rows]
        for name, value in state.items():  # per-head QK-norm (qwen3) keeps head_dim: copied as is
            if name.startswith(f"{src}self_attn.") and ("q_norm" in name or "k_norm" in name):
                new[dst + name[len(src):]] = value
        new[f"{dst}mlp.gate_proj.weight"] = state[f"{src}mlp.gate_proj.weight"][neurons][:, c]
        new[f"{dst}mlp.up_proj.weight"] = state[f"{src}mlp.up_proj.weight"][neurons][:, c]
        new[f"{dst}mlp.down_proj.weight"] = state[f"{src}mlp.down_proj.weight"][c][:, neurons]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            new[f"{dst}{norm}.weight"] = state[f"{src}{norm}.weight"][c]
    with torch.device("meta"):
        student = CausalLM(spec)
    _load(student, new, assign=True)
    student.tie_weights()
    return student.eval()


def _load(student, tensors: dict, assign: bool = False) -> None:
    expected = {k for k, _ in student.named_parameters()}
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:  # a bug in the slicing tables, never the user's input
        raise RuntimeError(f"student weights do not match the student: missing {missing[:3]}, unexpected {extra[:3]}")
    student.load_state_dict({k: v.contiguous().clone() for k, v in tensors.items()}, strict=False, assign=assign)


# ---- fidelity: the numbers distillation improves -------------------------------------------------

def sentence_embeddings(model, batches: list[dict]):
    """Mean-pooled, L2-normalised last hidden states (sentence-transformers' pooling). -> (N, hidden)."""
    import torch

    rows = []
    with torch.no_grad():
        for batch in batches:
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            rows.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(rows)


def _ranks(x):
    import torch

    ranks = torch.empty_like(x)
    ranks[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
    return ranks


def similarity_agreement(teacher_emb, student_emb) -> dict[str, float]:
    """Spearman and Pearson correlation of the pairwise cosine similarities (upper triangle)."""
    import torch

    n = teacher_emb.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    a = (teacher_emb @ teacher_emb.T)[iu[0], iu[1]].double()
    b = (student_emb @ student_emb.T)[iu[0], iu[1]].double()

    def pearson(x, y):
        x, y = x - x.mean(), y - y.mean()
        return float((x * y).sum() / (x.norm() * y.norm()))

    return {"spearman": round(pearson(_ranks(a), _ranks(b)), 4), "pearson": round(pearson(a, b), 4), "pairs": int(a.numel())}


def lm_fidelity(teacher_model, student_model, batches: list[dict]) -> dict[str, float]:
    """Mean per-token KL(teacher || student) of next-token distributions, and both perplexities."""
    import torch
    import torch.nn.functional as F

    kl = nll_t = nll_s = 0.0
    tokens = 0
    with torch.no_grad():
        for batch in batches:
            ids = batch["input_ids"]
            if ids.shape[1] < 2:
                continue
            lt = teacher_model(ids).logits[:, :-1].float().log_softmax(-1)
            ls = student_model(ids).logits[:, :-1].float().log_softmax(-1)
            target = ids[:, 1:]
            kl += float(F.kl_div(ls, lt, log_target=True, reduction="sum"))
            nll_t += float(F.nll_loss(lt.flatten(0, 1), target.flatten(), reduction="sum"))
            nll_s += float(F.nll_loss(ls.flatten(0, 1), target.flatten(), reduction="sum"))
            tokens += target.numel()
    return {"kl_to_teacher": round(kl / tokens, 4), "student_perplexity": round(math.exp(nll_s / tokens), 3),
            "teacher_perplexity": round(math.exp(nll_t / tokens), 3), "tokens": tokens}


def fidelity(teacher: Teacher, student, texts: list[str]) -> dict[str, Any]:
    """How close `student` is to the teacher on `texts` (held-out): the report distillation reads before and after."""
    batches = token_batches(teacher, texts, seed=1)
    if teacher.family in ENCODERS:
        return {"kind": "sentence-embedding similarity agreement", "texts": len(texts),
                **similarity_agreement(sentence_embeddings(teacher.model, batches), sentence_embeddings(student, batches))}
    return {"kind": "next-token KL and perplexity", "texts": len(texts), **lm_fidelity(teacher.model, student, batches)}


# ---- comparison ----------------------------------------------------------------------------------

def _inputs(teacher: Teacher, batch: int, seq: int) -> dict:
    import torch

    ids = torch.randint(0, teacher.config["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(batch * 1000 + seq))
    if teacher.family in ENCODERS:
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return {"input_ids": ids}


def compare(teacher: Teacher, student, student_shape: Shape, grid=LATENCY_GRID, repeats: int = 5) -> dict[str, Any]:
    """Teacher vs student: parameters, FLOPs, memory, measured latency per (batch, seq) and speed-up."""
    import torch

    from archsmith.analyze import count_flops, median_ms

    context = teacher.config.get("max_position_embeddings", 512)
    grid = [(b, min(s, context)) for b, s in grid]
    flop_seq = min(128, context)  # FLOPs at one sequence of 128 tokens

    def summary(model, shape: Shape) -> dict[str, Any]:
        params = sum(p.numel() for p in model.parameters())
        row = {"params": params, "layers": len(shape.layers), "hidden": shape.hidden, "heads": shape.heads,
               "kv_heads": shape.kv_heads, "ffn": shape.ffn,
               "forward_flops": count_flops(model, kwargs=_inputs(teacher, 1, flop_seq)),
               "weights_bytes": {"fp32": params * 4, "bf16": params * 2, "int8": params}}
        if teacher.family in DECODERS:
            from archsmith.estimate import kv_cache_bytes

            row["kv_cache_bytes_per_token_bf16"] = kv_cache_bytes(_student_spec(teacher, shape), 1, 1, "bf16")
        return row

    result = {"teacher": summary(teacher.model, teacher.shape), "student": summary(student, student_shape),
              "flops_at": {"batch": 1, "seq": flop_seq}, "latency": []}
    with torch.no_grad():
        for b, s in grid:
            x = _inputs(teacher, b, s)
            t_ms = median_ms(lambda: _forward(teacher.family, teacher.model, x), repeats=repeats)
            s_ms = median_ms(lambda: _forward(teacher.family, student, x), repeats=repeats)
            result["latency"].append({"batch": b, "seq": s, "teacher_ms": round(t_ms, 3), "student_ms": round(s_ms, 3),
                                      "speedup": round(t_ms / s_ms, 3)})
    t, s = result["teacher"], result["student"]
    result["ratios"] = {"params": round(s["params"] / t["params"], 4), "forward_flops": round(s["forward_flops"] / t["forward_flops"], 4)}
    result["threads"] = torch.get_num_threads()
    return result


def comparison_chart(report: dict[str, Any]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cmp = report["comparison"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        labels = [f"b{r['batch']} s{r['seq']}" for r in cmp["latency"]]
        x = range(len(labels))
        ax1.bar([i - 0.2 for i in x], [r["teacher_ms"] for r in cmp["latency"]], 0.4, label="teacher")
        ax1.bar([i + 0.2 for i in x], [r["student_ms"] for r in cmp["latency"]], 0.4, label="student")
        for i, r in zip(x, cmp["latency"]):
            ax1.text(i + 0.2, r["student_ms"], f"{r['speedup']:.2f}x", ha="center", va="bottom", fontsize=8)
        ax1.set_xticks(list(x), labels)
        ax1.set_ylabel("median forward latency (ms, CPU)")
        ax1.legend()
        keys = ["params", "forward_flops"]
        ax2.bar([k.replace("_", " ") for k in keys], [cmp["ratios"][k] for k in keys], color="#55a868")
        ax2.axhline(1.0, color="grey", lw=0.8)
        ax2.set_ylabel("student / teacher")
        fig.suptitle(f"{report['teacher']} -> student ({report['version']}, {report['strategy']}, "
                     f"{report['achieved_reduction']:.1%} fewer parameters)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
        plt.close(fig)

    return write


# ---- the command ---------------------------------------------------------------------------------

def compress(model: str | Path, reduction: float, out: str | Path, strategy: str = "both", v2: bool = False,
             kv_heads: int | None = None, calibration: str | Path | None = None, heldout: str | Path | None = None,
             grid=LATENCY_GRID, repeats: int = 5, overwrite: bool = False,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Plan, initialise, save and compare a student of `model`; returns the report (also compression.json in `out`).

    `out` gets config.json + model.safetensors (AutoModel / AutoModelForCausalLM load them), the
    teacher's tokenizer files, compression.json and comparison.png, all at once or not at all.
    """
    import shutil

    from archsmith.files import check_out_dir, write_files

    say = progress or (lambda message: None)
    check_out_dir(out, overwrite)
    calib_texts = read_lines(calibration, CALIBRATION, "calibration")
    held_texts = read_lines(heldout, HELDOUT, "heldout")
    say("loading the teacher")
    teacher = load_teacher(model)
    shape = plan(teacher, reduction, strategy, v2, kv_heads)
    say(f"student: {len(shape.layers)} layers, hidden {shape.hidden}, {shape.heads} heads / {shape.kv_heads} KV, ffn {shape.ffn}")
    say(f"activation importance on {len(calib_texts)} calibration texts")
    scores = importance(teacher, token_batches(teacher, calib_texts))
    student = build_student(teacher, shape, scores, v2)
    built = sum(p.numel() for p in student.parameters())
    if built != shape.params:
        raise RuntimeError(f"planned {shape.params:,} parameters but built {built:,}")
    say("fidelity on held-out text")
    fid = {"teacher_vs_student": fidelity(teacher, student, held_texts)}
    say("measuring teacher and student")
    comparison = compare(teacher, student, shape, grid=grid, repeats=repeats)
    notes = []
    if teacher.tokenizer is None:
        notes.append("no tokenizer in the model directory: calibration and fidelity used random token ids")
    if v2:
        notes.append("v2: " + ("tanh-GELU (gelu_new); BertModel has no grouped KV heads" if teacher.family in ENCODERS else
                               f"{shape.kv_heads} KV heads mean-pooled from the teacher's (KV cache / {shape.heads // shape.kv_heads})"))
    report = {
        "teacher": str(model), "family": teacher.family, "version": "v2" if v2 else "v1", "strategy": strategy,
        "target_reduction": reduction, "achieved_reduction": round(1 - shape.params / teacher.shape.params, 4),
        "teacher_params": teacher.shape.params, "student_params": shape.params,
        "shape": {"teacher": asdict(teacher.shape), "student": asdict(shape)},
        "kept_layers": shape.layers, "calibration_texts": len(calib_texts), "calibration_tokens": scores["tokens"],
        "fidelity": fid, "comparison": comparison, "notes": notes,
        "loads_with": "AutoModel" if teacher.family in ENCODERS else "AutoModelForCausalLM",
    }
    files: dict[str, Any] = {}
    if teacher.family in ENCODERS:
        files["config.json"] = student.config.to_json_string()
    else:
        from archsmith.hfconfig import hf_from_spec

        files["config.json"] = json.dumps(hf_from_spec(student.spec, dtype="float32"), indent=2) + "\n"
    files["model.safetensors"] = _safetensors(student)
    for name in TOKENIZER_FILES:
        if (teacher.path / name).is_file():
            files[name] = (lambda src: lambda dst: shutil.copyfile(src, dst))(teacher.path / name)
    files["compression.json"] = json.dumps(report, indent=2) + "\n"
    files["comparison.png"] = comparison_chart(report)
    say("writing the student")
    written = write_files(out, files, overwrite)
    report["files"] = [str(p) for p in written]
    return report


def _safetensors(model) -> Callable[[Path], None]:
    """Parameters and persistent buffers of `model`, one safetensors file (a tied lm_head stored once)."""
    def write(path: Path) -> None:
        from safetensors.torch import save_file

        seen, tensors = set(), {}
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen or name.endswith("rotary_emb.inv_freq"):
                continue
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.detach().contiguous()
        if getattr(getattr(model, "spec", None), "tie_embeddings", False):
            tensors.pop("lm_head.weight", None)
        save_file(tensors, str(path), metadata={"format": "pt"})

    return write
