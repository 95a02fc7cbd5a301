"""Text generation with a KV cache: one prefill, then one token per step for the whole batch.

Greedy (temperature 0) or sampling with temperature, top-k and top-p (applied in that order,
as transformers does). Rows that emit a stop token are padded from then on; the loop ends when
every row has stopped or `max_new_tokens` are out. Prompts of different lengths are left-padded
with an attention mask (1 for tokens, 0 for padding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from archsmith.errors import ArchsmithError
from archsmith.network import CausalLM


def generate(model: CausalLM, input_ids: Tensor, attention_mask: Tensor | None = None, *, max_new_tokens: int = 32,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             stop_tokens: int | list[int] | None = None, pad_token_id: int | None = None, seed: int | None = None) -> Tensor:
    """input_ids (B, S) -> (B, S + n) with n <= max_new_tokens new tokens per row.

    stop_tokens defaults to the spec's eos_token_id; pad_token_id to the spec's pad (else the
    first stop token, else 0). `seed` makes sampling reproducible.
    """
    spec = model.spec
    B, S = _check_args(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p)
    stops = _as_list(spec.eos_token_id if stop_tokens is None else stop_tokens)
    pad = pad_token_id if pad_token_id is not None else spec.pad_token_id if spec.pad_token_id is not None else (stops or [0])[0]
    gen = torch.Generator(device=input_ids.device)
    if seed is not None:
        gen.manual_seed(seed)
    padded = attention_mask is not None and not bool(attention_mask.all())
    mask = attention_mask.long() if padded else None
    positions = (mask.sum(-1, keepdim=True) if padded else torch.full((B, 1), S, device=input_ids.device))
    cache = model.new_cache(B, S + max_new_tokens)
    stop_set = torch.tensor(stops, device=input_ids.device, dtype=torch.long)
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    tokens = [input_ids]
    with torch.inference_mode():
        logits = model(input_ids, attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1]
        for step in range(max_new_tokens):
            nxt = _pick(logits, temperature, top_k, top_p, gen)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            tokens.append(nxt[:, None])
            done = done | torch.isin(nxt, stop_set)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            if mask is not None:
                mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
            logits = model(nxt[:, None], attention_mask=mask, position_ids=positions, cache=cache).logits[:, -1]
            positions = positions + 1
    return torch.cat(tokens, dim=1)


def _pick(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, gen: torch.Generator) -> Tensor:
    """logits (B, V) -> next token ids (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - top_p
        drop[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _check_args(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p) -> tuple[int, int]:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ArchsmithError("input_ids", "must be a (batch, seq) integer tensor with seq >= 1")
    B, S = input_ids.shape
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ArchsmithError("max_new_tokens", f"must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ArchsmithError("temperature", f"must be >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ArchsmithError("top_k", f"must be an integer >= 1, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ArchsmithError("top_p", f"must be in (0, 1], got {top_p!r}")
    if model.spec.position == "learned" and S + max_new_tokens > model.spec.context_length:
        raise ArchsmithError("max_new_tokens", f"prompt + new tokens must be <= context_length={model.spec.context_length} "
                                               f"(learned positions), got {S} + {max_new_tokens}")
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (B, S):
            raise ArchsmithError("attention_mask", f"must have the shape of input_ids {(B, S)}, got {tuple(attention_mask.shape)}")
        m = attention_mask.long()
        if bool((m[:, 1:] < m[:, :-1]).any()) or not bool(m[:, -1].all()):
            raise ArchsmithError("attention_mask", "generation needs left padding: zeros first, then ones, last token real")
    return B, S
