"""network.py on its own: structure equals the estimator, and the properties a decoder LM must have."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archsmith.errors import SpecError
from archsmith.estimate import count_params, model_tensors
from archsmith.network import (CausalLM, GroupedRouter, MoE, alibi_slopes, build_mask, grouped_mm_fits, init_weights,
                               next_token_loss)
from archsmith.spec import ArchitectureSpec, MLASpec, MoESpec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second OpenMP thread only spins on shared cores

BASE = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_size=96, vocab_size=128,
            context_length=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
VARIANTS = {
    "llama-gqa": {},
    "mha": {"num_kv_heads": 4},
    "mqa": {"num_kv_heads": 1},
    "sliding": {"sliding_window": 4, "model_type": "mistral"},
    "qk-norm-head": {"qk_norm": "head", "head_dim": 32},
    "qk-norm-full-post": {"qk_norm": "full", "norm_placement": "post"},
    "sandwich-geglu": {"norm_placement": "sandwich", "ffn_kind": "geglu", "activation": "gelu_pytorch_tanh"},
    "alibi": {"position": "alibi"},
    "learned-gpt": {"position": "learned", "norm": "layernorm", "ffn_kind": "gelu", "activation": "gelu_new",
                    "qkv_bias": True, "o_bias": True, "mlp_bias": True, "fused_qkv": True, "tie_embeddings": True},
    "fused-partial-rope": {"fused_qkv": True, "fused_gate_up": True, "partial_rotary_factor": 0.5},
    "llama3-rope": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 16}},
    "moe": {"moe": MoESpec(num_experts=4, top_k=2, expert_ffn_size=48, shared_experts=1, shared_ffn_size=32),
            "model_type": "qwen2_moe", "extra": {"norm_topk_prob": True, "router_aux_loss_coef": 0.01}},
    "mla-dense-first-moe": {"mla": MLASpec(kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, q_lora_rank=24),
                            "head_dim": 24, "num_kv_heads": 4, "rope_scaling": {"rope_type": "yarn", "factor": 2.0},
                            "moe": MoESpec(num_experts=4, top_k=2, expert_ffn_size=24, shared_experts=1, shared_ffn_size=16,
                                           shared_expert_gate=True, layers=(1,)),
                            "model_type": "deepseek_v3", "extra": {"n_group": 1, "topk_group": 1}},
    "parallel-nope": {"norm_placement": "parallel_shared", "norm": "layernorm_nobias", "qk_norm": "per_head", "nope_layers": (1,),
                      "model_type": "smollm3"},
}


def spec_of(variant: str, **overrides) -> ArchitectureSpec:
    return ArchitectureSpec(**{**BASE, **VARIANTS[variant], **overrides})


def model_of(variant: str, seed: int = 0, **overrides) -> CausalLM:
    return CausalLM.from_spec(spec_of(variant, **overrides), seed=seed).eval()


def ids(batch: int, seq: int, seed: int = 0, vocab: int = 128) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ---- structure == estimator ----------------------------------------------------------------

@st.composite
def specs(draw) -> ArchitectureSpec:
    heads = draw(st.integers(1, 8))
    kv = draw(st.sampled_from([d for d in range(1, heads + 1) if heads % d == 0]))
    position = draw(st.sampled_from(["rope", "alibi", "learned"]))
    gated = draw(st.sampled_from(["swiglu", "geglu", "gelu"]))
    layers = draw(st.integers(1, 4))
    moe = None
    if draw(st.booleans()):
        experts = draw(st.integers(1, 6))
        shared = draw(st.integers(0, 2))
        moe_layers = draw(st.one_of(st.none(), st.lists(st.integers(0, layers - 1), min_size=1, unique=True).map(sorted).map(tuple)))
        moe = MoESpec(num_experts=experts, top_k=draw(st.integers(1, experts)), expert_ffn_size=draw(st.integers(1, 40)),
                      shared_experts=shared, shared_ffn_size=draw(st.integers(1, 24)) if shared else 0,
                      router_bias=draw(st.booleans()), shared_expert_gate=shared > 0 and draw(st.booleans()), layers=moe_layers)
    window = draw(st.one_of(st.none(), st.integers(1, 32)))
    head_dim = draw(st.sampled_from([2, 4, 8, 16, 24]))
    mla = None
    if position == "rope" and draw(st.booleans()):  # latent attention: head_dim is its nope + rope parts
        rope = draw(st.sampled_from([2, 4, 8]))
        mla = MLASpec(kv_lora_rank=draw(st.integers(1, 32)), qk_nope_head_dim=draw(st.integers(0, 16)), qk_rope_head_dim=rope,
                      v_head_dim=draw(st.integers(1, 16)), q_lora_rank=draw(st.one_of(st.none(), st.integers(1, 32))))
        head_dim = mla.qk_nope_head_dim + rope
    nope = draw(st.lists(st.integers(0, layers - 1), unique=True).map(sorted).map(tuple)) if position == "rope" and not mla else ()
    family, extra = layout_family(moe, mla, window, nope)
    if family in GROUPED:  # first-k-dense placement, no window; grouped routing needs 2 experts per group
        window, nope = None, ()
        if moe is not None:
            experts = max(2, moe.num_experts)
            moe = dataclasses.replace(moe, num_experts=experts, top_k=min(moe.top_k, experts), router_bias=False,  # a buffer there
                                      layers=None if moe.layers is None else tuple(range(moe.layers[0], layers)))
    elif family == "qwen2_moe":  # one gated shared expert, no NoPE layers
        moe, nope = dataclasses.replace(moe, shared_experts=1, shared_ffn_size=moe.shared_ffn_size or 8), ()
    elif family == "smollm3":
        window = None
    return ArchitectureSpec(
        hidden_size=draw(st.integers(2, 96)), num_layers=layers, num_heads=heads, num_kv_heads=kv,
        head_dim=head_dim, ffn_size=draw(st.integers(1, 200)),
        vocab_size=draw(st.integers(3, 300)), context_length=draw(st.integers(2, 128)),
        ffn_kind=gated, activation=draw(st.sampled_from(["silu", "gelu", "gelu_pytorch_tanh", "relu"])),
        norm=draw(st.sampled_from(["rmsnorm", "layernorm", "layernorm_nobias", "layernorm_nonparametric"])),
        norm_placement=draw(st.sampled_from(["pre", "post", "sandwich", "parallel", "parallel_shared"])),
        position=position, partial_rotary_factor=1.0, tie_embeddings=draw(st.booleans()),
        qkv_bias=draw(st.booleans()), o_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()),
        qk_norm="none" if mla else draw(st.sampled_from(["none", "head", "full", "per_head"])), sliding_window=window,
        fused_qkv=not mla and draw(st.booleans()), fused_gate_up=draw(st.booleans()), moe=moe, mla=mla,
        nope_layers=nope, model_type=family, extra=extra,
    )


GROUPED = ("deepseek_v3", "glm4_moe")  # MoE families with first-k-dense layers and a grouped router


def layout_family(moe, mla, window, nope) -> tuple[str, dict]:
    """A family whose transformers code honours the drawn layout (network.py builds no other), and its router settings."""
    if mla is not None:
        return "deepseek_v3", {"n_group": 1, "topk_group": 1}
    if moe is not None:
        return ("qwen2_moe", {}) if moe.shared_experts == 1 or window else ("glm4_moe", {"n_group": 1, "topk_group": 1})
    if nope:
        return "smollm3", {}
    return ("qwen2" if window else "llama"), {}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_parameters_equal_the_estimator(spec):
    with torch.device("meta"):
        model = CausalLM(spec)
    named = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert named == {t.name: t.shape for t in model_tensors(spec)}
    assert model.num_parameters() == count_params(spec)["total"]
    assert len(model.model.layers) == spec.num_layers


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs(), st.integers(0, 2**31 - 1))
def test_random_specs_train_and_match_eager(spec, seed):
    """Any valid spec builds, its loss is finite, every parameter gets a gradient, SDPA == eager."""
    model = CausalLM.from_spec(spec, seed=seed)
    x = torch.randint(0, spec.vocab_size, (2, min(7, spec.context_length)), generator=torch.Generator().manual_seed(seed))
    out = model(x, labels=x)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with torch.no_grad():
        sdpa = model(x).logits
        model.set_attention("eager")
        assert torch.allclose(model(x).logits, sdpa, atol=1e-5, rtol=1e-5)


# ---- behaviour ------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_causal(variant, impl):
    model = model_of(variant)
    model.set_attention(impl)
    a, b = ids(2, 12, seed=1), ids(2, 12, seed=2)
    b[:, :7] = a[:, :7]
    with torch.no_grad():
        la, lb = model(a).logits, model(b).logits
    assert torch.allclose(la[:, :7], lb[:, :7], atol=1e-6)
    assert not torch.allclose(la[:, 7:], lb[:, 7:], atol=1e-3)  # the changed tokens do change later logits


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_decode_equals_full_forward(variant):
    model = model_of(variant)
    x = ids(2, 12)
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache(2, 12)
        steps = [model(x[:, :5], cache=cache).logits]
        steps.append(model(x[:, 5:8], cache=cache).logits)  # a chunk after a prefix
        for t in range(8, 12):
            steps.append(model(x[:, t:t + 1], cache=cache).logits)
    assert cache.length == 12
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("variant", ["llama-gqa", "sliding", "alibi", "learned-gpt", "moe", "mla-dense-first-moe", "parallel-nope"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_unpadded(variant, side):
    model = model_of(variant)
    long, short = ids(1, 10, seed=3), ids(1, 6, seed=4)
    pad = torch.zeros(1, 4, dtype=torch.long)
    padded = torch.cat((pad, short), 1) if side == "left" else torch.cat((short, pad), 1)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0 if side == "left" else 1
    mask[1, 6:] = 0 if side == "right" else 1
    with torch.no_grad():
        batch = model(torch.cat((long, padded)), attention_mask=mask).logits
        alone_long, alone_short = model(long).logits, model(short).logits
    real = slice(4, 10) if side == "left" else slice(0, 6)
    assert torch.allclose(batch[:1], alone_long, atol=1e-5)
    assert torch.allclose(batch[1:, real], alone_short, atol=1e-5)


@pytest.mark.parametrize("variant", ["sliding", "alibi", "qk-norm-full-post", "mla-dense-first-moe"])
def test_left_padded_kv_decode_equals_full_forward(variant):
    model = model_of(variant)
    x = ids(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        full = model(x, attention_mask=mask).logits
        cache = model.new_cache(2, 10)
        steps = [model(x[:, :6], attention_mask=mask[:, :6], cache=cache).logits]
        positions = mask[:, :6].sum(-1, keepdim=True)
        for t in range(6, 10):
            steps.append(model(x[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=positions, cache=cache).logits)
            positions = positions + 1
    got = torch.cat(steps, dim=1)
    assert torch.allclose(got[0, 3:], full[0, 3:], atol=1e-5)
    assert torch.allclose(got[1], full[1], atol=1e-5)


@pytest.mark.parametrize("variant", ["llama-gqa", "sandwich-geglu", "moe", "learned-gpt"])
def test_checkpointed_gradients_equal_plain(variant):
    model = model_of(variant).train()
    x = ids(2, 12)
    model(x, labels=x).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    calls = []
    model.model.layers[1].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    for layers in (None, [1]):
        model.zero_grad()
        calls.clear()
        model.set_checkpointing(True, layers=layers)
        model(x, labels=x).loss.backward()
        assert len(calls) == 2  # layer 1's MLP ran again in backward: it was recomputed, not stored
        for n, p in model.named_parameters():
            assert torch.allclose(p.grad, plain[n], atol=1e-6), n
    model.set_checkpointing(False)
    assert not any(layer.checkpointing for layer in model.model.layers)


def test_attention_variants_change_only_kv_width():
    for kv, expect in ((4, "MHA"), (2, "GQA"), (1, "MQA")):
        attn = model_of("llama-gqa", num_kv_heads=kv).model.layers[0].self_attn
        assert attn.k_proj.weight.shape == (kv * 16, 64), expect
        assert attn.q_proj.weight.shape == (64, 64)


def test_sliding_window_limits_what_a_query_sees():
    mask = build_mask(6, 0, None, 3, torch.device("cpu"))[0, 0]
    assert mask.sum(-1).tolist() == [1, 2, 3, 3, 3, 3]
    assert mask[5].tolist() == [False, False, False, True, True, True]
    model = model_of("sliding")
    a, b = ids(1, 10, seed=1), ids(1, 10, seed=1)
    b[0, 0] = (a[0, 0] + 1) % 128
    with torch.no_grad():  # 2 layers of window 4: token 0 reaches at most position 6
        la, lb = model(a).logits, model(b).logits
    assert torch.allclose(la[0, 7:], lb[0, 7:], atol=1e-6)
    assert not torch.allclose(la[0, :7], lb[0, :7], atol=1e-4)


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes(8) == [2 ** -(i + 1) for i in range(8)]
    six = alibi_slopes(6)  # not a power of two: 4 geometric slopes + every other one of the 8-head set
    assert six[:4] == alibi_slopes(4) and six[4:] == alibi_slopes(8)[0::2][:2]


def test_moe_routes_every_token_to_exactly_k_experts():
    model = model_of("moe")
    moe: MoE = model.model.layers[0].mlp
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(0))
    flat = x.reshape(-1, 64)
    weights, indices, probs = moe.route(flat)
    assert indices.shape == (21, 2)
    assert all(len(set(row)) == 2 for row in indices.tolist())
    assert torch.allclose(weights.sum(-1), torch.ones(21))
    assert torch.equal(indices, probs.topk(2, dim=-1).indices)
    with torch.no_grad():
        out, aux = moe(x)
        expected = torch.zeros_like(flat)  # dense reference: each token through its k experts only
        for t in range(21):
            for w, e in zip(weights[t], indices[t]):
                gate, up = (moe.experts.gate_up_proj[e] @ flat[t]).chunk(2)
                expected[t] += w * (moe.experts.down_proj[e] @ (torch.nn.functional.silu(gate) * up))
            expected[t] += moe.shared_experts(flat[t])
    assert torch.allclose(out.reshape(-1, 64), expected, atol=1e-5)
    assert aux.item() >= 2 - 1e-5  # E * sum f_e P_e is at least k: minimal when balanced


def test_expert_dispatch_equals_a_per_token_loop_with_gradients():
    """Both dispatch paths (grouped GEMM, one matmul per expert) give each token sum_k w * expert_k(x), and the same
    gradients for x, the routing weights and both expert tensors; experts 0 and 3 get no token (zero gradients)."""
    experts = model_of("moe").model.layers[0].mlp.experts  # 4 experts of width 48, hidden 64
    gen = torch.Generator().manual_seed(0)
    x, weights = torch.randn(6, 64, generator=gen), torch.rand(6, 2, generator=gen)
    indices = torch.tensor([[1, 2], [2, 1], [1, 2], [2, 1], [2, 1], [2, 1]])
    upstream = torch.randn(6, 64, generator=gen)
    assert grouped_mm_fits(x, experts.gate_up_proj, experts.down_proj)  # this torch runs the grouped path here

    def run(dispatch) -> list[torch.Tensor]:
        experts.zero_grad(set_to_none=True)
        xs, ws = x.clone().requires_grad_(), weights.clone().requires_grad_()
        out = dispatch(xs, ws)
        out.backward(upstream)
        return [out.detach(), xs.grad, ws.grad, experts.gate_up_proj.grad, experts.down_proj.grad]

    def loop(xs, ws):
        rows = []
        for t in range(6):
            row = torch.zeros(64)
            for j in range(2):
                gate, up = (experts.gate_up_proj[indices[t, j]] @ xs[t]).chunk(2)
                row = row + ws[t, j] * (experts.down_proj[indices[t, j]] @ (torch.nn.functional.silu(gate) * up))
            rows.append(row)
        return torch.stack(rows)

    expected = run(loop)
    for grouped in (True, False):
        experts.grouped = grouped
        got = run(lambda xs, ws: experts(xs, indices, ws))
        for name, a, b in zip(("out", "x", "weights", "gate_up_proj", "down_proj"), got, expected):
            assert torch.allclose(a, b, atol=1e-5), (grouped, name, (a - b).abs().max().item())
        assert not got[3][[0, 3]].any() and not got[4][[0, 3]].any() and got[3][[1, 2]].any()


def test_next_token_loss_equals_torch_cross_entropy():
    """Value and gradient of the loss equal F.cross_entropy's over the shifted labels, -100 rows ignored."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 5), generator=gen)
    labels[1, 2] = -100
    mine = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    loss = next_token_loss(mine, labels)
    ref = torch.nn.functional.cross_entropy(theirs[:, :-1].reshape(-1, 11).float(), labels[:, 1:].reshape(-1), ignore_index=-100)
    (2.0 * loss).backward()
    (2.0 * ref).backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert torch.allclose(mine.grad, theirs.grad, atol=1e-6) and not mine.grad[:, -1].any() and not mine.grad[1, 1].any()


def test_next_token_loss_of_bf16_logits_and_a_second_backward():
    """bf16 logits (autocast) get a bf16 gradient equal to F.cross_entropy's over their fp32 copy; the gradient is
    formed in the saved log-softmax's storage, so a second backward through the same graph is refused, not wrong."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 50, generator=gen).bfloat16()
    labels = torch.randint(0, 50, (3, 7), generator=gen)
    mine, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = next_token_loss(mine, labels)
    ref = torch.nn.functional.cross_entropy(theirs[:, :-1].reshape(-1, 50).float(), labels[:, 1:].reshape(-1))
    loss.backward(retain_graph=True)
    ref.backward()
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert mine.grad.dtype == torch.bfloat16 and torch.equal(mine.grad, theirs.grad)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_moe_aux_loss_is_k_for_a_uniform_router_and_enters_the_loss():
    model = model_of("moe")
    for layer in model.model.layers:
        torch.nn.init.zeros_(layer.mlp.gate.weight)
    x = ids(2, 9)
    out = model(x, labels=x)
    assert out.aux_loss.item() == pytest.approx(2.0, abs=1e-6)
    plain = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 128), x[:, 1:].reshape(-1))
    assert out.loss.item() == pytest.approx(plain.item() + 0.01 * 2.0, abs=1e-5)


def test_moe_aux_loss_counts_real_tokens_only():
    """Padding tokens are routed (their outputs are discarded) but do not enter the load-balancing loss."""
    model = model_of("moe")
    x = ids(2, 10, seed=5)
    mask = torch.ones_like(x)
    mask[1, :4] = 0
    other = x.clone()
    other[1, :4] = (x[1, :4] + 7) % 128  # other padding tokens, same real tokens
    with torch.no_grad():
        aux = model(x, attention_mask=mask).aux_loss
        assert torch.allclose(model(other, attention_mask=mask).aux_loss, aux, atol=1e-6)
        assert not torch.allclose(model(other).aux_loss, model(x).aux_loss, atol=1e-4)  # unmasked, padding counts


def test_grouped_router_keeps_topk_groups_and_scales_weights():
    spec = ArchitectureSpec(**{**BASE, "model_type": "deepseek_v3", "num_kv_heads": 4, "head_dim": 24,
                               "mla": MLASpec(kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16),
                               "moe": MoESpec(num_experts=8, top_k=2, expert_ffn_size=16, shared_experts=1, shared_ffn_size=16),
                               "extra": {"n_group": 4, "topk_group": 1, "routed_scaling_factor": 2.5}})
    router = CausalLM.from_spec(spec, seed=0).model.layers[0].mlp.gate
    assert isinstance(router, GroupedRouter)
    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(1))
    weights, indices, probs = router(x)
    assert (indices // 2 == indices[:, :1] // 2).all()  # topk_group 1: both experts from one group of 2
    assert torch.allclose(weights.sum(-1), torch.full((50,), 2.5))  # renormalised, times routed_scaling_factor
    router.e_score_correction_bias[indices[0, 0]] = -10.0  # the correction steers the choice, not the weights
    assert indices[0, 0] not in router(x)[1][0]
    with pytest.raises(SpecError) as err:
        CausalLM.from_spec(spec.replace(extra={"n_group": 3}))
    assert err.value.field == "extra.n_group"


def test_mla_caches_the_latent_not_the_heads():
    model = model_of("mla-dense-first-moe")
    cache = model.new_cache(2, 12)
    assert [tuple(k.shape) for k in cache.keys] == [(2, 1, 12, 16)] * 2  # kv_lora_rank
    assert [tuple(v.shape) for v in cache.values] == [(2, 1, 12, 8)] * 2  # the shared rotated key
    assert isinstance(model.model.layers[0].mlp, torch.nn.Module) and not model.model.layers[0].is_moe
    assert model.model.layers[1].is_moe


def test_init_policy_is_reproducible_and_depth_scaled():
    spec = spec_of("llama-gqa", hidden_size=256, num_heads=4, num_kv_heads=4, ffn_size=512, num_layers=8, qkv_bias=True)
    a, b, c = CausalLM.from_spec(spec, seed=7), CausalLM.from_spec(spec, seed=7), CausalLM.from_spec(spec, seed=8)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if pa.dim() > 1:
            assert not torch.equal(pa, pc), name
    layer = a.model.layers[3]
    resid = spec.initializer_range / math.sqrt(2 * spec.num_layers)
    assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(spec.initializer_range, rel=0.03)
    assert layer.self_attn.o_proj.weight.std().item() == pytest.approx(resid, rel=0.03)
    assert layer.mlp.down_proj.weight.std().item() == pytest.approx(resid, rel=0.03)
    assert a.model.embed_tokens.weight.std().item() == pytest.approx(spec.initializer_range, rel=0.03)
    assert torch.equal(layer.self_attn.q_proj.bias, torch.zeros(256))
    assert torch.equal(layer.input_layernorm.weight, torch.ones(256))
    init_weights(a, seed=8)
    assert all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_tied_head_shares_the_embedding():
    model = model_of("learned-gpt")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.num_parameters() == count_params(model.spec)["total"]


def test_block_compiles_without_graph_breaks():
    model = model_of("qk-norm-head")
    block = model.model.layers[0]
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    rope = model.model.rotary_emb(torch.arange(16).expand(2, 16), x.dtype)
    compiled = torch.compile(block, fullgraph=True)  # fullgraph: any graph break is an error
    with torch.no_grad():
        assert torch.allclose(compiled(x, rope, None)[0], block(x, rope, None)[0], atol=1e-5)
    sliding = model_of("sliding").train()
    trained = torch.compile(sliding.model.layers[0], fullgraph=True, backend="aot_eager")
    rope = sliding.model.rotary_emb(torch.arange(16).expand(2, 16), x.dtype)
    mask = build_mask(16, 0, None, 4, x.device)
    out, _ = trained(x.clone().requires_grad_(), rope, mask)
    out.sum().backward()
    assert trained.self_attn.q_proj.weight.grad is not None


@pytest.mark.parametrize("change, field", [
    ({"activation": "swishy"}, "activation"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 4.0}}, "rope_scaling.rope_type"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": "32"}}, "rope_scaling.beta_fast"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling.low_freq_factor"),
    ({"rope_scaling": {"rope_type": "linear", "factor": -1}}, "rope_scaling.factor"),
    ({"partial_rotary_factor": 0.0625}, "partial_rotary_factor"),
    ({"encoder": True}, "encoder"),
])
def test_unbuildable_specs_name_the_field(change, field):
    with pytest.raises(SpecError) as err:
        CausalLM(spec_of("llama-gqa", **change))
    assert err.value.field == field


def test_bad_inputs_are_clear():
    model = model_of("llama-gqa")
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, vocab_size=128\)"):
        model(torch.tensor([[1, 500]]))
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        model(torch.randn(1, 4))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids(1, 4), attention_mask=torch.ones(1, 5))
    with pytest.raises(SpecError, match="attention"):
        model.set_attention("flash")
    with pytest.raises(ValueError, match="exceeds context_length=64"):
        model_of("learned-gpt")(ids(1, 65))
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache holds 4 positions"):
        model(ids(1, 5), cache=cache)
