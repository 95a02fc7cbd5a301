"""KV-cache generation: greedy tokens equal transformers' generate; sampling, stop tokens, padding, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_FAMILIES, tiny_model

from archsmith import families
from archsmith.errors import ArchsmithError
from archsmith.generate import generate
from archsmith.hfconfig import spec_from_hf
from archsmith.network import CausalLM


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
