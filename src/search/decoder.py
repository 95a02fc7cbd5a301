"""`archsmith design --search --data CORPUS`: the decoder space around a design, measured by training on the corpus.

The space: the recommended width and its two ladder neighbours (each depth solved for the same parameter target;
a shape whose depth cannot land within 10% of it is not trained),
the template's KV heads or half as many, a dense MLP or 8 experts top-2 on the upper half of the layers, full
attention everywhere or a sliding window (a quarter of the context) on alternate layers. Every trial is a
`network.py` CausalLM of the design's size, trained for `steps` AdamW steps on windows of the corpus tokenized with
the design's tokenizer and scored by held-out loss; the recommendation is the trial with the lowest, not a fixed
first candidate. The study (`search_study.db`), its JSON and its chart go into the design directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from archsmith.errors import ArchsmithError
from archsmith.search.space import Dimension, Space
from archsmith.search.study import HELDOUT, run_study

SEQ, BATCH = 64, 8  # tokens per window and windows per batch of a proxy run
BUDGET = 0.10  # a trial more than 10% off the design's parameter target is not trained (the comparison is at equal size)
DEFAULT_TRIALS, DEFAULT_STEPS = 8, 30


def token_batches(corpus: str, tokenizer_dir: str, eos: int, seq: int, count: int, vocab: int) -> list:
    """`count` (input_ids, labels) batches of BATCH windows of seq tokens, documents joined by EOS, in corpus order
    (cycled when the corpus is shorter)."""
    import torch
    from tokenizers import Tokenizer

    from archsmith.files import read_bytes
    from archsmith.train.data import corpus_files, documents

    tok = Tokenizer.from_str(read_bytes(Path(tokenizer_dir) / "tokenizer.json", "tokenizer").decode("utf-8"))
    need = count * BATCH * (seq + 1)
    ids: list[int] = []
    for text in documents(corpus_files([corpus])):
        ids += tok.encode(text).ids + [eos]
        if len(ids) >= need:
            break
    if len(ids) < (HELDOUT + 1) * BATCH * (seq + 1):
        raise ArchsmithError("data", f"{corpus} holds {len(ids):,} tokens; a search needs at least "
                                     f"{(HELDOUT + 1) * BATCH * (seq + 1):,} ({HELDOUT + 1} batches of {BATCH} x {seq + 1})")
    tokens = torch.tensor((ids * (need // len(ids) + 1))[:need]).clamp_(max=vocab - 1).view(count, BATCH, seq + 1)
    return [((b[:, :-1],), b[:, 1:]) for b in tokens]


def decoder_space(result: dict[str, Any]) -> Space:
    """Widths around the recommendation, KV heads, MoE and windows (see the module docstring)."""
    from archsmith.design import HIDDEN_LADDER

    i = HIDDEN_LADDER.index(result["recommended"].spec.hidden_size)
    widths = tuple(HIDDEN_LADDER[j] for j in (i - 1, i, i + 1) if 0 <= j < len(HIDDEN_LADDER))
    return Space(model=(Dimension("hidden", "choice", choices=widths), Dimension("kv", "choice", choices=("template", "half")),
                        Dimension("moe", "choice", choices=("dense", "8:2 upper")),
                        Dimension("window", "choice", choices=("none", "alternate"))), train=())


def search_design(result: dict[str, Any], corpus: str, trials: int = DEFAULT_TRIALS, steps: int = DEFAULT_STEPS,
                  seed: int = 0, progress: bool = True, tasks: list[str] | None = None, include: list[str | Path] = (),
                  limit: int | None = None) -> dict[str, Any]:
    """Search the decoder space of `result` (a design made with a tokenizer) on `corpus`; the study's result with the
    winning spec under `spec` and the study's files (bytes) under `files`. With `tasks` (lm-evaluation-harness
    names, or YAMLs under `include`; `limit` examples each) a trial is scored by their mean accuracy instead of its
    held-out loss."""
    from archsmith import components
    from archsmith.design import shape_spec
    from archsmith.network import CausalLM
    from archsmith.search.study import check_args
    from archsmith.tokenizer import TokenizerInfo

    tokenizer = result.get("tokenizer")
    if tokenizer is None:
        raise ArchsmithError("search", "needs --tokenizer DIR: the proxy runs train on the corpus in that tokenizer's tokens")
    check_args(trials, steps, "cross_entropy", "flops", "hyperband", None, None)
    tpl, params = result["template"], result["target"]["params"]
    vocab, context = result["vocab"]["padded"], result["recommended"].spec.context_length
    seq = min(SEQ, context)
    info = result["tokenizer"]

    def spec_for(hidden: int, kv: str, moe: str, window: str):
        base_kv = tpl["kv_heads"] if kv == "template" else max(1, tpl["kv_heads"] // 2)
        chosen = components.parse(moe="8:2" if moe != "dense" else None, moe_layers="upper" if moe != "dense" else None,
                                  window=max(16, context // 4) if window != "none" else None)
        spec = shape_spec(tpl, hidden, params, vocab, context, base_kv, TokenizerInfo(**info), chosen)
        if spec is None:
            raise ArchsmithError("search", f"no 2-256 layer shape of width {hidden} reaches {params:,} parameters")
        return spec

    def factory(**kwargs):
        import torch

        return CausalLM.from_spec(spec_for(**kwargs), seed=seed, device=torch.get_default_device())  # meta when sizing

    score = task_score(tokenizer["path"], tasks, include, limit, seed) if tasks else None
    batches = token_batches(corpus, tokenizer["path"], info["eos_token_id"] or 0, seq, HELDOUT + steps, vocab)
    config = {"model": "archsmith design", "data": str(corpus), "space": decoder_space(result).to_dict(), "loss": "cross_entropy",
              "objective": "flops", "steps": steps, "max_params": int(params * (1 + BUDGET)), "max_memory": None,
              "min_params": int(params * (1 - BUDGET)), "pruner": "hyperband",
              "metric": f"{'+'.join(tasks)} acc" if tasks else "loss"}
    with tempfile.TemporaryDirectory(prefix="archsmith-search-") as tmp:
        found = run_study(factory, decoder_space(result), batches[HELDOUT:], batches[:HELDOUT], Path(tmp), config,
                          trials=trials, seed=seed, progress=progress, score=score)
        files = {"search.json": (Path(tmp) / "search.json").read_bytes(), "search_study.db": (Path(tmp) / "study.db").read_bytes()}
        if (Path(tmp) / "pareto.png").is_file():
            files["search_pareto.png"] = (Path(tmp) / "pareto.png").read_bytes()
    best = found["recommended"]  # the front's lowest held-out loss (or task error): the lowest of all finished trials
    if best is None:
        raise ArchsmithError("search", f"no trial of {trials} finished its {steps} steps; raise --trials or --steps")
    found.update(spec=spec_for(**best["model_kwargs"]), best=best, files=files, seq=seq, batch=BATCH, heldout_batches=HELDOUT)
    found.pop("study", None)
    found.pop("chart", None)
    return found


def task_score(tokenizer_dir: str, tasks: list[str], include: list[str | Path], limit: int | None, seed: int):
    """score(trained CausalLM) -> the mean `acc` of lm-evaluation-harness `tasks` (checked here, before any training)."""
    from archsmith.quality import check_measure

    check_measure(list(tasks), list(include), prefix="search_")
    from transformers import AutoTokenizer

    from archsmith.quality import harness
    from archsmith.quality.language import HarnessLM, network_lm

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def score(module) -> float:
        results = harness.run(HarnessLM(network_lm(module, tokenizer, "cpu")), list(tasks), [Path(d) for d in include],
                              limit=limit, seed=seed)["results"]
        missing = [t for t in tasks if results.get(t, {}).get("acc") is None]
        if missing:
            raise ArchsmithError("search_tasks", f"{missing[0]} has no acc metric to score a trial by")
        return sum(results[t]["acc"] for t in tasks) / len(tasks)

    return score
