"""KV-cache generation: greedy tokens equal transformers' generate; sampling, stop tokens, padding, errors; speculative
decoding: the target's greedy tokens, the target's sampling law, `archsmith generate`."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_FAMILIES, tiny_model

from archsmith import families
from archsmith.errors import ArchsmithError
from archsmith.generate import generate, speculative_generate
from archsmith.hfconfig import spec_from_hf
from archsmith.network import CausalLM
from archsmith.spec import ArchitectureSpec


# Dense families, the MoE ones (softmax and grouped sigmoid routers, shared experts), MLA (its cache holds the latent)
# and Gemma 2 (soft-caps, alternating windows beyond the window of 24).
@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe", "qwen2_moe", "deepseek_v3",
                                        "gemma2"])
def pair(request, tmp_path_factory):
    kernel = "sdpa" if "sdpa" in families.get(request.param).attention_kernels else "eager"
    hf = tiny_model(request.param, attn=kernel, seed=5).eval()
    with torch.no_grad():  # move norms and router corrections off their initial values, as trained weights are
        for name, t in hf.state_dict().items():
            if t.dim() == 1 and t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, CausalLM.from_pretrained(path).eval()


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 12, 8 and 10 tokens, left-padded with the pad id 0."""
    x = torch.randint(3, 512, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[1, :4] = 0
    mask[2, :2] = 0
    return x.masked_fill(mask == 0, 0), mask


def hf_greedy(hf, x, mask=None, n=30, eos=2):
    return hf.generate(x, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=eos)


def test_greedy_equals_transformers(pair):
    hf, ours = pair
    x, mask = prompts()
    single = generate(ours, x[:1], max_new_tokens=30)  # 30 decode steps beyond mistral's window of 24
    assert single.shape == (1, 42)
    assert torch.equal(single, hf_greedy(hf, x[:1]))
    assert torch.equal(generate(ours, x, mask, max_new_tokens=30), hf_greedy(hf, x, mask))


def test_stop_token_ends_a_row_and_pads_it(pair):
    hf, ours = pair
    x, mask = prompts()
    free = generate(ours, x, mask, max_new_tokens=12, stop_tokens=[])
    stop = int(free[0, 12 + 3])  # the 4th token row 0 generates
    out = generate(ours, x, mask, max_new_tokens=12, stop_tokens=[stop])
    assert torch.equal(out, hf_greedy(hf, x, mask, n=12, eos=stop))
    first = (out[0, 12:] == stop).nonzero()[0].item()
    assert first <= 3 and (out[0, 12 + first + 1:] == 0).all()


def test_sampling_is_reproducible_and_respects_top_k_and_top_p():
    ours = CausalLM.from_spec(spec_from_hf(TINY_FAMILIES["llama"]), seed=1)
    x = torch.randint(3, 512, (2, 6), generator=torch.Generator().manual_seed(1))
    greedy = generate(ours, x, max_new_tokens=20, stop_tokens=[])
    assert torch.equal(generate(ours, x, max_new_tokens=20, temperature=1.0, top_k=1, stop_tokens=[], seed=3), greedy)
    assert torch.equal(generate(ours, x, max_new_tokens=20, temperature=1.0, top_p=1e-6, stop_tokens=[], seed=3), greedy)
    a = generate(ours, x, max_new_tokens=20, temperature=1.5, stop_tokens=[], seed=11)
    assert torch.equal(a, generate(ours, x, max_new_tokens=20, temperature=1.5, stop_tokens=[], seed=11))
    assert not torch.equal(a, generate(ours, x, max_new_tokens=20, temperature=1.5, stop_tokens=[], seed=12))
    assert not torch.equal(a, greedy)
    for kwargs in ({"top_k": 3}, {"top_p": 0.3}):
        out = generate(ours, x, max_new_tokens=20, temperature=2.0, stop_tokens=[], seed=5, **kwargs)
        with torch.no_grad():
            probs = ours(out).logits[:, 5:-1].float().div(2.0).softmax(-1)  # the distribution each new token came from
        chosen = out[:, 6:]
        rank = (probs > probs.gather(-1, chosen[..., None])).sum(-1)  # tokens strictly more likely than the pick
        if "top_k" in kwargs:
            assert (rank < 3).all()
        else:  # nucleus: the mass strictly above the pick is below top_p
            above = (probs * (probs > probs.gather(-1, chosen[..., None]))).sum(-1)
            assert (above < 0.3 + 1e-6).all()


@pytest.mark.parametrize("kwargs, field", [
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_p": 1.5}, "top_p"),
    ({"attention_mask": torch.tensor([[1, 1, 0]])}, "attention_mask"),
    ({"attention_mask": torch.ones(2, 3)}, "attention_mask"),
])
def test_bad_generation_arguments_name_the_field(kwargs, field):
    ours = CausalLM.from_spec(spec_from_hf(TINY_FAMILIES["llama"]))
    with pytest.raises(ArchsmithError) as err:
        generate(ours, torch.tensor([[5, 6, 7]]), **kwargs)
    assert err.value.field == field


# ---- speculative decoding ---------------------------------------------------------------------
# (one torch thread: on shared cores, OpenMP threads spinning on these small ops cost more than they bring)

def noisy_copy(model: CausalLM, scale: float, seed: int = 7) -> CausalLM:
    """The model's spec and weights with Gaussian noise of `scale` x each tensor's std: a draft that agrees often, not always."""
    copy = CausalLM.from_spec(model.spec).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        state = {name: t + torch.randn(t.shape, generator=gen) * t.float().std().nan_to_num(0.0) * scale
                 for name, t in model.state_dict().items()}
    copy.load_state_dict(state)
    return copy


@pytest.fixture(scope="module")
def llama_and_drafts():
    """A tiny Llama target and three drafts with its vocabulary: a smaller random model (rarely agrees), a noisy copy
    (agrees some of the time) and the target itself (always agrees)."""
    target = CausalLM.from_spec(spec_from_hf(TINY_FAMILIES["llama"]), seed=1).eval()
    small = CausalLM.from_spec(spec_from_hf({**TINY_FAMILIES["llama"], "num_hidden_layers": 1, "hidden_size": 32,
                                             "intermediate_size": 64}), seed=2).eval()
    return target, {"small": small, "noisy": noisy_copy(target, 0.15), "itself": target}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_speculative_greedy_equals_plain_greedy(llama_and_drafts, k):
    target, drafts = llama_and_drafts
    x, mask = prompts()
    for prompt, prompt_mask in ((x[:1], None), (x, mask)):  # one prompt; three of 12, 8 and 10 tokens, left-padded
        plain = generate(target, prompt, prompt_mask, max_new_tokens=20, stop_tokens=[])
        rates = {}
        for name, draft in drafts.items():
            out, stats = speculative_generate(target, draft, prompt, prompt_mask, draft_tokens=k, max_new_tokens=20, stop_tokens=[])
            assert torch.equal(out, plain), (name, k)
            assert stats.new_tokens == 20 and stats.target_forwards == 1 + stats.rounds
            assert stats.new_tokens == 1 + stats.rounds + stats.accepted // prompt.shape[0]  # every round: kept + one
            rates[name] = stats.acceptance_rate
        assert rates["itself"] == 1.0 and 0 < rates["noisy"] < 1 and rates["small"] < rates["noisy"], rates
        if prompt.shape[0] == 1:
            assert torch.equal(generate(target, prompt, max_new_tokens=20, stop_tokens=[], draft=drafts["noisy"], draft_tokens=k), plain)
            _, stats = speculative_generate(target, target, prompt, draft_tokens=k, max_new_tokens=20, stop_tokens=[])
            rounds = -(-19 // (k + 1))  # the first token comes from the prefill, then k + 1 per round
            assert stats.rounds == rounds and stats.tokens_per_target_forward == 20 / (1 + rounds)


@pytest.mark.usefixtures("one_thread")
def test_speculative_greedy_equals_plain_in_every_family(pair):
    """Sliding windows past their width (mistral, gemma2: 32 > 24 tokens), MoE routing, MLA's latent cache: all roll back
    exactly."""
    _, ours = pair
    x, mask = prompts()
    draft = noisy_copy(ours, 0.03)
    plain = generate(ours, x, mask, max_new_tokens=20)
    out, stats = speculative_generate(ours, draft, x, mask, draft_tokens=3, max_new_tokens=20)
    assert torch.equal(out, plain)
    assert 0 < stats.acceptance_rate < 1  # rounds that kept some proposals and rolled the rest back


@pytest.mark.usefixtures("one_thread")
def test_speculative_stop_tokens_end_rows_as_plain_decoding(llama_and_drafts):
    target, drafts = llama_and_drafts
    x, mask = prompts()
    free = generate(target, x, mask, max_new_tokens=20, stop_tokens=[])
    for stop in (int(free[0, 12 + 3]), [int(free[0, 12 + 6]), int(free[1, 12 + 5]), int(free[2, 12 + 1])]):  # one row; all
        plain = generate(target, x, mask, max_new_tokens=20, stop_tokens=stop)
        for draft in drafts.values():
            for k in (2, 5):
                out, _ = speculative_generate(target, draft, x, mask, draft_tokens=k, max_new_tokens=20, stop_tokens=stop)
                assert torch.equal(out, plain), (stop, k)
    assert plain.shape[1] < 32  # every row stopped: the output ends where the last one did


def chi_square_pvalue(observed: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Pearson's test of counts (R, C) against row distributions (R, C) (each row's own total); 0.0 when a cell
    of probability 0 is not empty."""
    from scipy.stats import chi2

    observed, expected_probs = observed.double(), expected_probs.double()
    if observed[expected_probs == 0].sum() > 0:
        return 0.0
    expected = observed.sum(-1, keepdim=True) * expected_probs
    cells = expected > 0
    stat = ((observed - expected)[cells] ** 2 / expected[cells]).sum().item()
    dof = int(((expected_probs > 0).sum(-1) - 1)[observed.sum(-1) > 0].sum())
    return float(chi2.sf(stat, dof))


def bigram(seed: int, vocab: int = 6) -> CausalLM:
    """A Llama whose attention and MLP outputs are zero: the next token depends on the last one only (a Markov chain),
    with logits of std ~1.2 (peaked, unlike a fresh initialisation's)."""
    model = CausalLM.from_spec(ArchitectureSpec(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, ffn_size=32,
                                                vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0), seed=seed).eval()
    gen = torch.Generator().manual_seed(1000 + seed)  # not init_weights' stream: the head would mirror the embedding
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=gen) * 0.3)
    return model


@pytest.mark.usefixtures("one_thread")
def test_speculative_sampling_follows_the_target_chain():
    """One long sample (every path: rejections at each position, all k kept plus the bonus token, rollbacks): its
    transitions follow the target's bigram distribution after temperature, top-k and top-p (each cuts tokens here),
    and refute the draft's."""
    warp = {"temperature": 1.5, "top_k": 5, "top_p": 0.9}
    target, draft = bigram(1), bigram(2)
    with torch.no_grad():
        logits = {name: m(torch.arange(6)[:, None]).logits[:, 0].float() / warp["temperature"] for name, m in
                  (("target", target), ("draft", draft))}
    exact = {}
    for name, row in logits.items():  # warped here independently of generate.py: top-k, then top-p
        row = row.masked_fill(row < row.topk(warp["top_k"], -1).values[:, -1:], float("-inf"))
        sorted_p, order = row.softmax(-1).sort(-1, descending=True)
        keep = (sorted_p.cumsum(-1) - sorted_p) < warp["top_p"]  # the smallest prefix holding top_p
        exact[name] = row.masked_fill(~keep.scatter(1, order, keep), float("-inf")).softmax(-1)
    assert (exact["target"] == 0).any(1).all() and ((exact["target"] == 0).sum(1) > 1).any()  # top-k, and top-p somewhere
    out, stats = speculative_generate(target, draft, torch.tensor([[3]]), draft_tokens=3, max_new_tokens=600,
                                      stop_tokens=[], seed=0, **warp)
    seq = out[0]
    counts = torch.zeros(6, 6)
    counts.index_put_((seq[:-1], seq[1:]), torch.ones(len(seq) - 1), accumulate=True)
    assert 0.2 < stats.acceptance_rate < 0.9 and stats.rounds < 420, stats  # both branches of the scheme ran often
    assert chi_square_pvalue(counts, exact["target"]) > 1e-3
    assert chi_square_pvalue(counts, exact["draft"]) < 1e-9  # the test tells the two apart


@pytest.mark.usefixtures("one_thread")
def test_speculative_sampling_batch_matches_the_exact_joint_distribution():
    """4000 rows of one prompt through real attention: the joint law of the first 4 tokens (3^4 outcomes, computed
    exactly from the target) holds for a different draft (rejections, rolled-back caches) and for the target as draft."""
    import itertools

    spec = ArchitectureSpec(hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1, ffn_size=32, vocab_size=3)

    def peaked(seed: int) -> CausalLM:
        model = CausalLM.from_spec(spec, seed=seed).eval()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        return model

    target, other = peaked(1), peaked(2)
    prompt = torch.tensor([[0, 2, 1, 1, 0]])
    outcomes = torch.tensor(list(itertools.product(range(3), repeat=4)))  # (81, 4)

    def joint(model):
        with torch.no_grad():
            logp = model(torch.cat((prompt.expand(81, -1), outcomes), 1)).logits[:, 4:-1].float().log_softmax(-1)
        return logp.gather(-1, outcomes[..., None])[..., 0].sum(-1).exp()

    exact = joint(target)
    assert abs(exact.sum().item() - 1) < 1e-5
    for draft in (other, target):
        out, stats = speculative_generate(target, draft, prompt.expand(4000, -1), draft_tokens=2, max_new_tokens=4,
                                          temperature=1.0, stop_tokens=[], seed=1)
        index = (out[:, 5:] * torch.tensor([27, 9, 3, 1])).sum(-1)
        counts = torch.bincount(index, minlength=81)[None].float()
        assert chi_square_pvalue(counts, exact[None]) > 1e-3, stats
        if draft is other:
            assert chi_square_pvalue(counts, joint(other)[None]) < 1e-9  # power: the draft's own law is refuted
            assert stats.acceptance_rate < 1
        else:
            assert stats.acceptance_rate == 1.0


@pytest.mark.usefixtures("one_thread")
def test_speculative_sampling_is_reproducible(llama_and_drafts):
    target, drafts = llama_and_drafts
    x, mask = prompts()
    kwargs = dict(draft_tokens=3, max_new_tokens=20, temperature=1.2, top_p=0.95, stop_tokens=[])
    a, _ = speculative_generate(target, drafts["noisy"], x, mask, seed=4, **kwargs)
    assert torch.equal(a, speculative_generate(target, drafts["noisy"], x, mask, seed=4, **kwargs)[0])
    assert not torch.equal(a, speculative_generate(target, drafts["noisy"], x, mask, seed=5, **kwargs)[0])
    assert torch.equal(a[:, :13], generate(target, x, mask, seed=4, **{k: v for k, v in kwargs.items() if k != "draft_tokens"})[:, :13])


@pytest.mark.parametrize("kwargs, field", [
    ({"draft": "small.safetensors"}, "draft"),
    ({"draft": CausalLM.from_spec(spec_from_hf({**TINY_FAMILIES["llama"], "vocab_size": 256}))}, "draft"),
    ({"draft_tokens": 0}, "draft_tokens"),
    ({"draft_tokens": 17}, "draft_tokens"),
    ({"draft_tokens": 2.0}, "draft_tokens"),
])
def test_bad_draft_arguments_name_the_field(kwargs, field):
    target = CausalLM.from_spec(spec_from_hf(TINY_FAMILIES["llama"]))
    with pytest.raises(ArchsmithError) as err:
        speculative_generate(target, kwargs.pop("draft", target), torch.tensor([[5, 6, 7]]), **kwargs)
    assert err.value.field == field
    with pytest.raises(ValueError):
        target.new_cache(1, 4).truncate(1)  # nothing is cached yet


def cli(*args) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from archsmith.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], terminal_width=80)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.usefixtures("one_thread")
def test_generate_command_with_a_draft(tiny_lm, tmp_path):
    """`archsmith generate` on saved models with the tokenizer of tests/data: the tokens of plain greedy decoding,
    speculative stats, the text within 80 columns; a draft of another vocabulary is refused naming --draft's field."""
    from transformers import AutoTokenizer

    from conftest import TINY_LM

    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    dirs = {}
    for name, fields in (("target", {}), ("draft", {"num_layers": 1, "hidden_size": 32, "ffn_size": 64}),
                         ("other", {"num_layers": 1, "vocab_size": 448})):
        dirs[name] = tmp_path / name
        CausalLM.from_spec(ArchitectureSpec(**{**TINY_LM, **fields}), seed=3).save_pretrained(dirs[name])
        for file in tokenizer_files:
            (dirs[name] / file).write_bytes((tiny_lm["tokenizer"] / file).read_bytes())
    code, stdout, stderr = cli("generate", dirs["target"], "--prompt", "Once upon a time", "--max-new-tokens", 12,
                               "--draft", dirs["draft"], "--draft-tokens", 3, "--compare", "--json")
    assert code == 0, stderr
    result = json.loads(stdout)
    tok = AutoTokenizer.from_pretrained(dirs["target"])
    ids = torch.tensor([tok("Once upon a time").input_ids])
    plain = generate(CausalLM.from_pretrained(dirs["target"]).eval(), ids, max_new_tokens=12)
    assert result["tokens"] == plain[0, ids.shape[1]:].tolist() and result["identical"] is True
    assert result["speculative"]["draft_tokens"] == 3 and 0 <= result["speculative"]["acceptance_rate"] <= 1
    assert result["text"].startswith("Once upon a time") and result["speed_up"] > 0
    code, stdout, stderr = cli("generate", dirs["target"], "--prompt", "Once upon a time", "--max-new-tokens", 12,
                               "--draft", dirs["draft"], "--temperature", "0.8", "--top-p", "0.9", "--seed", 1)
    assert code == 0, stderr
    assert stdout.startswith("Once upon a time") and "acceptance rate" in stdout
    assert max(len(line) for line in stdout.splitlines()) <= 80
    code, _, stderr = cli("generate", dirs["target"], "--prompt", "Once", "--draft", dirs["other"])
    assert code == 2 and "draft: must share the target's vocabulary" in stderr
    code, _, stderr = cli("generate", dirs["target"], "--prompt", "Once", "--draft", dirs["draft"], "--draft-tokens", 40)
    assert code == 2 and "draft_tokens" in stderr
