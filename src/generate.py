"""Text generation with a KV cache: one prefill, then one token per step for the whole batch; or speculative decoding.

Greedy (temperature 0) or sampling with temperature, top-k and top-p (applied in that order,
as transformers does). Rows that emit a stop token are padded from then on; the loop ends when
every row has stopped or `max_new_tokens` are out. Prompts of different lengths are left-padded
with an attention mask (1 for tokens, 0 for padding).

Speculative decoding (`speculative_generate`, or `generate(..., draft=...)`): a smaller draft
model with the same vocabulary proposes `draft_tokens` (k) tokens one by one with its own KV
cache; the target scores all of them in one forward over its cache; the longest agreeing prefix
is kept plus one token from the target, and both caches are truncated to what was kept.
Greedy: a proposal is kept while it equals the target's argmax, so the tokens are those of
`generate` with the target alone. Sampling: the rejection scheme of Leviathan et al. (2023) and
Chen et al. (2023): proposal x ~ q kept with probability min(1, p(x) / q(x)); at the first
rejection the token is drawn from norm(max(0, p - q)); when all k are kept, one more from p.
p and q are the target's and the draft's distributions after the same temperature / top-k /
top-p warping, so every token follows the target's warped distribution exactly.
Batches: every row keeps the same number of tokens per round, the minimum over the rows still
generating (a row that agreed further keeps only that many, plus its own next token, which the
scheme allows: it is the kept proposal or the residual draw at that position). Exact for every
row; the acceptance rate of a batch is at most that of its rows decoded alone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from archsmith.errors import ArchsmithError
from archsmith.network import CausalLM

MAX_DRAFT_TOKENS = 16  # k: tokens the draft proposes per target forward, 1..MAX_DRAFT_TOKENS


def generate(model: CausalLM, input_ids: Tensor, attention_mask: Tensor | None = None, *, max_new_tokens: int = 32,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             stop_tokens: int | list[int] | None = None, pad_token_id: int | None = None, seed: int | None = None,
             draft: CausalLM | None = None, draft_tokens: int = 4) -> Tensor:
    """input_ids (B, S) -> (B, S + n) with n <= max_new_tokens new tokens per row.

    stop_tokens defaults to the spec's eos_token_id; pad_token_id to the spec's pad (else the
    first stop token, else 0). `seed` makes sampling reproducible. With a `draft` model, speculative
    decoding with `draft_tokens` proposals per target forward (`speculative_generate`, whose stats this drops).
    """
    if draft is not None:
        return speculative_generate(model, draft, input_ids, attention_mask, draft_tokens=draft_tokens,
                                    max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                    stop_tokens=stop_tokens, pad_token_id=pad_token_id, seed=seed)[0]
    B, S = _check_args(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p)
    stops, pad, gen = _setup(model, input_ids, stop_tokens, pad_token_id, seed)
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


@dataclass
class SpeculativeStats:
    """What one speculative decode did. Token counts are per row, summed over the rows still generating."""

    draft_tokens: int  # k, proposals per round
    rounds: int  # draft proposals + one target verification each
    new_tokens: int  # columns generated (output length - prompt length)
    target_forwards: int  # the prefill, then one per round
    draft_forwards: int  # the prefill, then k (or fewer near max_new_tokens) per round
    proposed: int  # draft tokens proposed
    accepted: int  # draft tokens kept
    wall_s: float  # seconds of the whole call

    @property
    def acceptance_rate(self) -> float:
        """Kept / proposed draft tokens (0.0 when none was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        """New tokens per target forward, the prefill counted (plain decoding: 1.0)."""
        return self.new_tokens / self.target_forwards

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "acceptance_rate": round(self.acceptance_rate, 4),
                "tokens_per_target_forward": round(self.tokens_per_target_forward, 4)}


def speculative_generate(model: CausalLM, draft: CausalLM, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                         draft_tokens: int = 4, max_new_tokens: int = 32, temperature: float = 0.0,
                         top_k: int | None = None, top_p: float | None = None, stop_tokens: int | list[int] | None = None,
                         pad_token_id: int | None = None, seed: int | None = None) -> tuple[Tensor, SpeculativeStats]:
    """input_ids (B, S) -> ((B, S + n) tokens as `generate` returns them, stats), the draft proposing
    `draft_tokens` (1..MAX_DRAFT_TOKENS) tokens per target forward. Arguments as `generate`'s."""
    start = time.perf_counter()
    B, S = _check_args(model, input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p)
    _check_draft(model, draft, draft_tokens, S + max_new_tokens)
    stops, pad, gen = _setup(model, input_ids, stop_tokens, pad_token_id, seed)
    device = input_ids.device
    padded = attention_mask is not None and not bool(attention_mask.all())
    # the mask over every position either cache can hold (prompt, then generated tokens): caches index it by length
    mask = torch.cat((attention_mask.long(), torch.ones(B, max_new_tokens, dtype=torch.long, device=device)), 1) if padded else None
    pads = (S - attention_mask.long().sum(-1)) if padded else torch.zeros(B, dtype=torch.long, device=device)
    t_cache, d_cache = model.new_cache(B, S + max_new_tokens), draft.new_cache(B, S + max_new_tokens)
    stop_set = torch.tensor(stops, device=device, dtype=torch.long)
    sampling = temperature != 0

    def forward(net: CausalLM, cache, ids: Tensor, keep: int) -> Tensor:
        """ids (B, n) after the cached positions -> logits (B, keep, V) of the last `keep` of them."""
        end = cache.length + ids.shape[1]
        positions = (torch.arange(cache.length, end, device=device)[None] - pads[:, None]).clamp(min=0)
        return net(ids, attention_mask=None if mask is None else mask[:, :end], position_ids=positions, cache=cache,
                   logits_to_keep=keep).logits

    stats = SpeculativeStats(draft_tokens, 0, 0, 1, 1, 0, 0, 0.0)
    with torch.inference_mode():
        first = _pick(forward(model, t_cache, input_ids, 1)[:, -1], temperature, top_k, top_p, gen)  # as `generate`'s first token
        forward(draft, d_cache, input_ids, 1)
        columns, done = _stop(first[:, None], torch.zeros(B, dtype=torch.bool, device=device), stop_set, pad)
        out, generated = [input_ids, columns], 1
        last, pending = first, first[:, None]  # last: not in the target's cache; pending: not in the draft's
        while not bool(done.all()) and generated < max_new_tokens:
            k = min(draft_tokens, max_new_tokens - generated - 1)  # never more tokens than are left
            active = int((~done).sum())
            t_len, d_len = t_cache.length, d_cache.length
            proposal, q = [], []
            ids = pending
            for _ in range(k):
                logits = forward(draft, d_cache, ids, 1)[:, -1]
                if sampling:
                    q.append(_probs(logits, temperature, top_k, top_p))
                    ids = torch.multinomial(q[-1], 1, generator=gen)
                else:
                    ids = logits.argmax(-1, keepdim=True)
                proposal.append(ids)
            proposed = torch.cat(proposal, 1) if k else input_ids.new_empty(B, 0)
            logits = forward(model, t_cache, torch.cat((last[:, None], proposed), 1), k + 1)  # (B, k + 1, V)
            if sampling:
                p = _probs(logits.flatten(0, 1), temperature, top_k, top_p).view(B, k + 1, -1)
                q_all = torch.stack(q, 1) if k else p[:, :0]
                p_x = p[:, :k].gather(-1, proposed[..., None])[..., 0]
                q_x = q_all.gather(-1, proposed[..., None])[..., 0]  # > 0: each proposal was drawn from q
                u = torch.rand((B, k), generator=gen, device=device, dtype=p_x.dtype)
                agree = u * q_x < p_x  # kept with probability min(1, p / q)
            else:
                best = logits.argmax(-1)  # (B, k + 1)
                agree = best[:, :k] == proposed
            agree = agree | done[:, None]  # finished rows do not hold the others back
            kept = agree.long().cumprod(1).sum(1)  # the leading agreeing proposals of each row
            n = int(kept.min()) if k else 0
            if not sampling:
                nxt = best[:, n]
            elif n == k:
                nxt = torch.multinomial(p[:, k], 1, generator=gen)[:, 0]
            else:
                residual = (p[:, n] - q_all[:, n]).clamp(min=0)
                residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p[:, n])  # p == q: never rejected
                nxt = torch.where(kept > n, proposed[:, n], torch.multinomial(residual, 1, generator=gen)[:, 0])
            stats.rounds += 1
            stats.target_forwards += 1
            stats.draft_forwards += k
            stats.proposed += k * active
            stats.accepted += n * active
            t_cache.truncate(t_len + 1 + n)  # last and the n kept proposals
            if k:
                in_draft = min(n, k - 1)  # the draft saw pending and proposals[:k - 1]
                d_cache.truncate(d_len + pending.shape[1] + in_draft)
                pending = torch.cat((proposed[:, in_draft:n], nxt[:, None]), 1)
            else:
                pending = torch.cat((pending, nxt[:, None]), 1)
            last = nxt
            columns, done = _stop(torch.cat((proposed[:, :n], nxt[:, None]), 1), done, stop_set, pad)
            out.append(columns)
            generated += columns.shape[1]
    tokens = torch.cat(out, dim=1)
    stats.new_tokens = tokens.shape[1] - S
    stats.wall_s = time.perf_counter() - start
    return tokens, stats


def _stop(columns: Tensor, done: Tensor, stop_set: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """New columns (B, m) -> (those padded after each row's stop token, cut after the column where every row has
    stopped), done (B,) after them."""
    hit = done[:, None] | (torch.isin(columns, stop_set).long().cumsum(1) > 0)  # stopped at or before each column
    before = torch.cat((done[:, None], hit[:, :-1]), 1)
    columns = torch.where(before, torch.full_like(columns, pad), columns)
    finished = hit.all(0).nonzero()
    if len(finished):
        cut = int(finished[0]) + 1
        columns, hit = columns[:, :cut], hit[:, :cut]
    return columns, hit[:, -1]


def _setup(model: CausalLM, input_ids: Tensor, stop_tokens, pad_token_id, seed) -> tuple[list[int], int, torch.Generator]:
    """Stop tokens, the pad id and the sampling generator, from the arguments or the spec."""
    spec = model.spec
    stops = _as_list(spec.eos_token_id if stop_tokens is None else stop_tokens)
    pad = pad_token_id if pad_token_id is not None else spec.pad_token_id if spec.pad_token_id is not None else (stops or [0])[0]
    gen = torch.Generator(device=input_ids.device)
    if seed is not None:
        gen.manual_seed(seed)
    return stops, pad, gen


def _probs(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """logits (B, V) -> the sampling distribution (B, V), fp32: / temperature, then top-k, then top-p (temperature > 0)."""
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
    return logits.softmax(dim=-1)


def _pick(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, gen: torch.Generator) -> Tensor:
    """logits (B, V) -> next token ids (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return torch.multinomial(_probs(logits, temperature, top_k, top_p), 1, generator=gen)[:, 0]


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


def _check_draft(model: CausalLM, draft, draft_tokens: int, total: int) -> None:
    """The draft shares the target's vocabulary and device; k in [1, MAX_DRAFT_TOKENS]; `total` = prompt + new tokens."""
    if not isinstance(draft, CausalLM):
        raise ArchsmithError("draft", f"must be an archsmith.network.CausalLM, got {type(draft).__name__}")
    if draft.spec.vocab_size != model.spec.vocab_size:
        raise ArchsmithError("draft", f"must share the target's vocabulary: vocab_size {draft.spec.vocab_size} "
                                      f"!= the target's {model.spec.vocab_size}")
    if draft.lm_head.weight.device != model.lm_head.weight.device:
        raise ArchsmithError("draft", f"must be on the target's device {model.lm_head.weight.device}, "
                                      f"got {draft.lm_head.weight.device}")
    if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or not 1 <= draft_tokens <= MAX_DRAFT_TOKENS:
        raise ArchsmithError("draft_tokens", f"must be an integer in [1, {MAX_DRAFT_TOKENS}], got {draft_tokens!r}")
    if draft.spec.position == "learned" and total > draft.spec.context_length:
        raise ArchsmithError("draft", f"prompt + new tokens must be <= the draft's context_length={draft.spec.context_length} "
                                      f"(learned positions), got {total}")


# ---- the CLI's `generate`: model directories and text ------------------------------------------

def generate_text(model_dir: str | Path, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                  draft_dir: str | Path | None = None, draft_tokens: int = 4, compare: bool = False,
                  device: str | None = None) -> dict[str, Any]:
    """Continue `prompt` with the model in `model_dir` (config.json, safetensors, tokenizer files), speculatively
    when `draft_dir` holds a draft with the same vocabulary. `compare` also decodes with the target alone (after
    one short warm-up of each model) for the speed-up and, greedy, whether the tokens are identical.
    Returns text, token ids, seconds, tokens/s and, with a draft, the speculative stats."""
    if compare and draft_dir is None:
        raise ArchsmithError("compare", "needs a draft: it compares speculative with plain decoding")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = _load(model_dir, "model", device)
    draft = None
    if draft_dir is not None:
        draft, _ = _load(draft_dir, "draft", device, same_tokenizer_as=Path(model_dir))
    ids = torch.tensor([tokenizer(prompt).input_ids], dtype=torch.long, device=device)
    if ids.shape[1] == 0:
        raise ArchsmithError("prompt", "must encode to at least one token")
    S = ids.shape[1]
    args = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    _check_args(model, ids, None, max_new_tokens, temperature, top_k, top_p)
    if draft is not None:
        _check_draft(model, draft, draft_tokens, S + max_new_tokens)
    result: dict[str, Any] = {"model": str(model_dir), "draft": None if draft_dir is None else str(draft_dir), "device": device,
                              "prompt": prompt, "prompt_tokens": S, "settings": {**args, "draft_tokens": draft_tokens if draft else None},
                              "parameters": model.num_parameters(),
                              "draft_parameters": draft.num_parameters() if draft is not None else None}
    if compare:  # one short run of each first: the timed runs do not pay for first-call set-up
        generate(model, ids, max_new_tokens=2, stop_tokens=[])
        speculative_generate(model, draft, ids, max_new_tokens=2 + draft_tokens, draft_tokens=draft_tokens, stop_tokens=[])
    if draft is None:
        start = time.perf_counter()
        tokens = generate(model, ids, **args)
        seconds = time.perf_counter() - start
    else:
        tokens, stats = speculative_generate(model, draft, ids, draft_tokens=draft_tokens, **args)
        seconds = stats.wall_s
        result["speculative"] = stats.to_dict()
    new = tokens[0, S:].tolist()
    result.update(tokens=new, new_tokens=len(new), wall_s=round(seconds, 4), tokens_per_s=round(len(new) / seconds, 2),
                  completion=tokenizer.decode(new, skip_special_tokens=True),
                  text=tokenizer.decode(tokens[0].tolist(), skip_special_tokens=True))
    if compare:
        start = time.perf_counter()
        plain = generate(model, ids, **args)
        plain_s = time.perf_counter() - start
        n_plain = plain.shape[1] - S
        result["plain"] = {"new_tokens": n_plain, "wall_s": round(plain_s, 4), "tokens_per_s": round(n_plain / plain_s, 2)}
        result["speed_up"] = round((len(new) / seconds) / (n_plain / plain_s), 3)  # ratio of tokens/s
        result["identical"] = bool(torch.equal(plain, tokens)) if temperature == 0 else None  # sampling: other draws
    return result


def _load(path: str | Path, field: str, device: str, same_tokenizer_as: Path | None = None):
    """(CausalLM in eval mode, tokenizer) from a model directory: fp32 on CPU, the checkpoint's dtype on GPUs.
    For a draft (`same_tokenizer_as` the target's directory) no tokenizer is loaded, but a tokenizer.json it holds
    must be the target's."""
    from archsmith.files import kind, read_text

    path = Path(path)
    if kind(path, field) != "dir":
        raise ArchsmithError(field, f"not a model directory: {path}")
    try:
        model = CausalLM.from_pretrained(path, dtype=torch.float32 if device == "cpu" else None, device=device).eval()
    except ArchsmithError as exc:
        raise ArchsmithError(field, f"{path}: {exc}") from None
    if same_tokenizer_as is not None:
        mine, theirs = path / "tokenizer.json", same_tokenizer_as / "tokenizer.json"
        if kind(mine, field) == "file" and kind(theirs, "model") == "file" and read_text(mine, field) != read_text(theirs, "model"):
            raise ArchsmithError(field, f"{mine} differs from {theirs}: the draft must share the target's tokenizer")
        return model, None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ArchsmithError(field, f"{path} has no tokenizer transformers can read ({str(exc)[:120]})") from None
    return model, tokenizer
