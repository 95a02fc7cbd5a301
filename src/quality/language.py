"""Language models scored by lm-evaluation-harness: the harness builds the prompts and computes the metrics,
`HarnessLM` answers its requests with one of our loaded models.

    lm = HarnessLM(loaded)              # a `Loaded` model: transformers or archsmith.network, and its tokenizer
    raw = lm_eval.simple_evaluate(model=lm, tasks=[...], task_manager=TaskManager(include_path=DIR), ...)

Requests are scored in batches of right-padded sequences: a causal model never looks right, so padding needs no
mask and the logits of every real position are those of the unpadded sequence. Sequences longer than the context
keep their last `max_length` tokens, as the harness's own HF model does; rolling log-likelihoods (perplexity)
use the harness's disjoint windows. Generation is greedy and stops at the task's `until` strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window


@dataclass
class Loaded:
    """A causal LM ready to score: logits(input_ids (B, S)) -> (B, S, V); greedy(ids, n, stop) -> new token ids."""

    logits: Callable[[Any], Any]
    greedy: Callable[[list[int], int, list[int]], list[int]]
    tokenizer: Any  # a transformers tokenizer
    max_length: int  # tokens the model attends over
    engine: str  # "transformers" or "network"
    params: int
    device: str


class HarnessLM(TemplateLM):
    """lm-evaluation-harness's model interface over a `Loaded` model (one process, one device)."""

    def __init__(self, loaded: Loaded, batch_size: int = 8):
        super().__init__()
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.batch_size = batch_size
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos token")
        self._eot = int(eos)
        bos = self.tokenizer.bos_token_id
        self._prefix = int(bos) if bos is not None else self._eot

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "tokenizer").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """((context, continuation), context ids, continuation ids) -> (log p(continuation), greedy?) each."""
        import torch
        from tqdm import tqdm

        limit = self.loaded.max_length
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="scoring", disable=disable_tqdm or len(requests) < 2 * self.batch_size)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            seqs, spans = [], []
            for i in chunk:
                _, context, continuation = requests[i]
                whole = (context + continuation)[-(limit + 1):][:-1]  # inputs: the model predicts position t + 1
                seqs.append(whole)
                spans.append((len(whole) - len(continuation), len(whole), continuation))
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self._eot, dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
            with torch.inference_mode():
                logprobs = torch.log_softmax(self.loaded.logits(ids.to(self.loaded.device)).float(), dim=-1).cpu()
            for row, (i, (a, b, continuation)) in enumerate(zip(chunk, spans)):
                piece = logprobs[row, a:b]  # (len(continuation), V)
                target = torch.tensor(continuation, dtype=torch.long)
                answer = (float(piece.gather(-1, target[:, None]).sum()), bool((piece.argmax(-1) == target).all()))
                answers[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            bar.update(len(chunk))
        bar.close()
        return answers  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) of each whole text, over disjoint windows of the model's context."""
        totals = []
        for (text,) in [req.args for req in requests]:
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.loaded.max_length, context_len=1)]
            scored = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
            totals.append(sum(ll for ll, _ in scored))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), totals[-1])
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut at the first of its `until` strings."""
        out = []
        for context, kwargs in [req.args for req in requests]:
            until = kwargs.get("until") or [self.tokenizer.decode([self._eot])]
            until = [until] if isinstance(until, str) else list(until)
            n = int(kwargs.get("max_gen_toks", 256))
            ids = self.tok_encode(context)[-max(1, self.loaded.max_length - n):]
            text = self.tokenizer.decode(self.loaded.greedy(ids, n, [self._eot]), skip_special_tokens=True)
            for stop in until:
                text = text.split(stop)[0] if stop else text
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, kwargs), text)
        return out


def load_lm(path, engine: str = "transformers", device: str | None = None) -> Loaded:
    """A model directory (config.json, safetensors, tokenizer files) as a `Loaded` model.

    engine "transformers": AutoModelForCausalLM (the reference implementation; remote code never runs);
    engine "network": archsmith.network's CausalLM with the same weights (families in the registry).
    """
    from pathlib import Path

    import torch
    from transformers import AutoTokenizer

    from archsmith.errors import ArchsmithError

    path = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ArchsmithError("model", f"{path} has no tokenizer transformers can read ({str(exc)[:120]})") from None
    if engine == "network":
        from archsmith.network import CausalLM

        return network_lm(CausalLM.from_pretrained(path, dtype=torch.float32, device=device).eval(), tokenizer, device)
    from transformers import AutoModelForCausalLM

    from archsmith.analyze import quiet_transformers

    quiet_transformers()
    if not any(path.glob("*.safetensors")):
        raise ArchsmithError("model", f"{path} has no safetensors weights (only safetensors are loaded)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                     trust_remote_code=False).to(device).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise ArchsmithError("model", f"transformers cannot load {path} as a causal LM: {str(exc)[:160]}") from None
    limit = int(getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length or 2048)

    def greedy(ids: list[int], n: int, stop: list[int]) -> list[int]:
        row = model.generate(torch.tensor([ids], device=device), max_new_tokens=n, do_sample=False,
                             eos_token_id=stop, pad_token_id=stop[0])[0, len(ids):]
        return [t for t in row.tolist() if t not in stop]

    return Loaded(lambda ids: model(input_ids=ids).logits, greedy, tokenizer, limit, engine,
                  sum(p.numel() for p in model.parameters()), device)


def network_lm(model, tokenizer, device: str) -> Loaded:
    """An archsmith.network CausalLM (loaded, or being trained) as a `Loaded` model."""
    import torch

    from archsmith.generate import generate

    def greedy(ids: list[int], n: int, stop: list[int]) -> list[int]:
        row = generate(model, torch.tensor([ids], device=device), max_new_tokens=n, stop_tokens=stop)[0, len(ids):]
        return [t for t in row.tolist() if t not in stop]

    return Loaded(lambda ids: model(ids).logits, greedy, tokenizer, model.spec.context_length, "network",
                  sum(p.numel() for p in model.parameters()), str(device))
