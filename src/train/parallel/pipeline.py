"""Pipeline parallelism for `archsmith.network.CausalLM` on `torch.distributed.pipelining`.

The decoder's layers are cut into `pp * virtual` consecutive stages (sizes differ by at most one layer);
rank r of the `pp` dimension holds stages r, r + pp, ... (one with 1F1B and GPipe, two with the
interleaved 1F1B schedule). `split` prunes the model in place to what this rank holds, keeping the
parameter names (`model.layers.<i>` stays `model.layers.<i>`: the layers become a ModuleDict keyed by
their index), so checkpoints written by `torch.distributed.checkpoint` load under any other layout.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from archsmith.errors import ArchsmithError
from archsmith.train.parallel.layout import VIRTUAL


def stage_layers(num_layers: int, stages: int) -> list[range]:
    """Consecutive layer ranges of `stages` stages; the first `num_layers % stages` get one layer more."""
    base, extra = divmod(num_layers, stages)
    out, start = [], 0
    for s in range(stages):
        size = base + (s < extra)
        out.append(range(start, start + size))
        start += size
    return out


class Stage(nn.Module):
    """One pipeline stage: a run of the decoder's layers; the first stage embeds token ids, the last normalises and
    projects to logits. forward: input_ids (B, S) on the first stage, hidden (B, S / tp, hidden) elsewhere ->
    hidden (B, S / tp, hidden), or logits (B, S, vocab) on the last stage. Registers only its own modules, so its
    parameters are exactly the stage's."""

    def __init__(self, model: nn.Module, layers: range, first: bool, last: bool, seq_split: int = 1):
        super().__init__()
        decoder = model.model
        self.__dict__["lm"] = model  # not registered: other stages' layers live there too
        self.first, self.last, self.seq_split = first, last, seq_split
        self.layers = nn.ModuleDict({str(i): decoder.layers[str(i)] for i in layers})
        if first:
            self.embed_tokens = decoder.embed_tokens
            if getattr(decoder, "embed_positions", None) is not None:
                self.embed_positions = decoder.embed_positions
        if last:
            self.norm, self.lm_head = decoder.norm, model.lm_head

    def forward(self, x: Tensor) -> Tensor:
        decoder = self.lm.model
        B, S = x.shape[0], x.shape[1] * (1 if self.first else self.seq_split)
        positions = torch.arange(S, device=x.device).expand(B, S)
        if self.first:
            x = decoder.embed(x, positions)
        ropes, masks = decoder.context(positions, 0, None, None, x.dtype)
        x, _ = decoder.run_layers(x, ropes, masks, layers=list(self.layers.values()))
        return self.lm.head(decoder.norm(x)) if self.last else x


def split(model: nn.Module, pp_rank: int, pp: int, schedule: str, seq_split: int = 1) -> tuple[list[Stage], list[int]]:
    """Prune `model` in place to the stages rank `pp_rank` holds; returns (its Stage modules, their stage indices)."""
    total = pp * VIRTUAL[schedule]
    ranges = stage_layers(model.spec.num_layers, total)
    mine = [pp_rank + k * pp for k in range(VIRTUAL[schedule])]
    decoder = model.model
    layers = decoder.layers
    decoder.layers = nn.ModuleDict({str(i): layers[i] for s in mine for i in ranges[s]})
    stages = [Stage(model, ranges[s], s == 0, s == total - 1, seq_split) for s in mine]
    if 0 not in mine:
        decoder.embed_tokens = None
        if getattr(decoder, "embed_positions", None) is not None:
            decoder.embed_positions = None
    if total - 1 not in mine:
        decoder.norm, model.lm_head = None, None
    return stages, mine


def build_schedule(stages: list[Stage], indices: list[int], pp: int, schedule: str, group: Any, device: torch.device,
                   microbatches: int, loss_fn: Callable | None) -> Any:
    """The torch.distributed.pipelining schedule running `stages` (loss_fn None: forward only, for evaluation)."""
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import (Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B,
                                                        ScheduleLoopedBFS)

    total = pp * VIRTUAL[schedule]
    piped = [PipelineStage(stage, i, total, device, group=group) for stage, i in zip(stages, indices)]
    if schedule == "interleaved" and loss_fn is None:  # forward only, any number of micro-batches
        return ScheduleLoopedBFS(piped, microbatches)
    if schedule == "interleaved":
        if microbatches % pp:
            raise ArchsmithError("micro_batch", f"the interleaved schedule needs a multiple of pp={pp} micro-batches per "
                                                f"step; got {microbatches}")
        return ScheduleInterleaved1F1B(piped, microbatches, loss_fn=loss_fn)
    if loss_fn is None:
        return ScheduleGPipe(piped[0], microbatches)
    return (Schedule1F1B if schedule == "1f1b" else ScheduleGPipe)(piped[0], microbatches, loss_fn=loss_fn)
