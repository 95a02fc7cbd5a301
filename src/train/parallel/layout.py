"""Parallel layouts: one decoder over tp x pp x cp x dp processes, on one `init_device_mesh`.

The mesh's dimensions, outermost first, are ("pp", "dp", "cp", "tp"): tensor-parallel ranks are
neighbours (one node, NVLink), pipeline stages the farthest apart, as torchtitan lays them out.

- tp: `archsmith.train.parallel.tensor` (column/row-wise projections, sequence-parallel norms,
  vocabulary-parallel embedding and loss);
- pp: `archsmith.train.parallel.pipeline` (1F1B, interleaved 1F1B or GPipe over micro-batches);
- cp: context parallelism (`torch.distributed.tensor.experimental.context_parallel`): torch
  provides it for CUDA attention kernels only, so it is refused elsewhere;
- dp: FSDP2 over the data-parallel ranks (every layout shards its weights, gradients and optimizer
  state across them), each dp rank reading its share of the global batch.

Checkpoints are `torch.distributed.checkpoint` with parameter names as in the whole model, so a
run saved under one layout resumes under another (`archsmith.train.checkpoint`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from archsmith.errors import ArchsmithError

MAX_DEGREE = 1024
SCHEDULES = ("1f1b", "interleaved", "gpipe")  # pipeline schedules
VIRTUAL = {"1f1b": 1, "gpipe": 1, "interleaved": 2}  # pipeline stages per rank


@dataclass(frozen=True)
class Layout:
    """Degrees of tensor, pipeline and context parallelism; data parallelism takes the remaining processes."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    schedule: str = "1f1b"  # pipeline schedule: 1f1b, interleaved or gpipe

    @property
    def plain(self) -> bool:
        """No model parallelism: DDP or FSDP alone."""
        return self.tp == self.pp == self.cp == 1

    def dp(self, world: int) -> int:
        return world // (self.tp * self.pp * self.cp)

    def check(self, world: int, strategy: str) -> None:
        """Refuse, naming the field, degrees that do not fit `world` processes."""
        for name in ("tp", "pp", "cp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DEGREE:
                raise ArchsmithError(name, f"must be an integer in [1, {MAX_DEGREE}], got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ArchsmithError("pp_schedule", f"must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.plain:
            return
        model = self.tp * self.pp * self.cp
        if world % model:
            raise ArchsmithError("nproc", f"{world} processes do not split into tp {self.tp} x pp {self.pp} x cp {self.cp} "
                                          f"= {model} per model replica")
        if self.dp(world) > 1 and strategy != "fsdp":
            raise ArchsmithError("strategy", "a layout with tp, pp or cp shards its data-parallel ranks with FSDP: "
                                             "pass --strategy fsdp")

    def describe(self, world: int) -> str:
        parts = [f"{k}={v}" for k, v in (("tp", self.tp), ("pp", self.pp), ("cp", self.cp), ("dp", self.dp(world))) if v > 1]
        return " x ".join(parts) + (f" ({self.schedule})" if self.pp > 1 else "") if parts else "single"


def check_pipeline(spec: Any, pp: int, schedule: str, document_mask: bool = False) -> None:
    """Refuse, naming the field, what the pipeline (`archsmith.train.parallel.pipeline`) cannot run."""
    stages = pp * VIRTUAL[schedule]
    if spec.num_layers < stages:
        raise ArchsmithError("pp", f"{pp} ranks x {VIRTUAL[schedule]} stages each need at least {stages} layers; "
                                   f"the model has {spec.num_layers}")
    if spec.tie_embeddings:
        raise ArchsmithError("pp", "tied embeddings put one weight on the first and the last stage; untie them "
                                   "(tie_embeddings false) to pipeline this model")
    if spec.moe is not None:
        raise ArchsmithError("pp", "MoE layers add a router loss inside every stage, which the pipeline's loss cannot "
                                   "carry; train MoE designs with --strategy fsdp (and --tp 1)")
    if document_mask:
        raise ArchsmithError("document_mask", "goes without --pp: the pipeline passes one tensor between stages")


def check_model(layout: Layout, spec: Any, device_type: str, document_mask: bool = False) -> None:
    """Refuse what the layout cannot do with this model, before any process group work."""
    from archsmith.train.parallel import tensor

    if layout.tp > 1:
        tensor.check(spec, layout.tp)
    if layout.pp > 1:
        check_pipeline(spec, layout.pp, layout.schedule, document_mask)
    if layout.cp > 1 and device_type != "cuda":
        raise ArchsmithError("cp", "context parallelism runs on torch's CUDA attention kernels (ring attention); "
                                   "on CPU use --cp 1")
    if layout.cp > 1 and document_mask:
        raise ArchsmithError("document_mask", "goes without --cp: ring attention is causal over the whole window")


class Placed:
    """A CausalLM laid out on this process: its mesh coordinates, the pipeline (if any), and what the Trainer asks of it.

    `model` is pruned to this rank's pipeline stages and its tensors become DTensors (tp, dp); `root` is the module
    whose state dict names every tensor this rank holds, as in the whole model."""

    def __init__(self, layout: Layout, model: Any, d: Any, dtype: Any, micro_batches: int, document_mask: bool = False):
        from torch.distributed.device_mesh import init_device_mesh

        from archsmith.train.parallel import pipeline, shard, tensor

        check_model(layout, model.spec, d.device.type, document_mask)
        self.layout, self.d, self.model = layout, d, model
        dp = layout.dp(d.world)
        self.mesh = init_device_mesh(d.device.type, (layout.pp, dp, layout.cp, layout.tp), mesh_dim_names=("pp", "dp", "cp", "tp"))
        self.dp_rank, self.dp = self.mesh["dp"].get_local_rank(), dp
        self.pp_rank = self.mesh["pp"].get_local_rank()
        self.stages: list = []
        if layout.pp > 1:
            self.stages, self.indices = pipeline.split(model, self.pp_rank, layout.pp, layout.schedule, seq_split=layout.tp)
        if layout.tp > 1:
            tensor.parallelize(model, self.mesh["tp"])
        if layout.cp > 1:
            self.cp_mesh = self.mesh["cp"]
        self.fsdp = dp * layout.cp > 1
        if self.fsdp:
            names = ("dp", "cp") if layout.cp > 1 else ("dp",)
            fsdp_mesh = self.mesh[names]._flatten("dp_cp") if layout.cp > 1 else self.mesh["dp"]
            # pp: a stage runs every micro-batch's forward, so its weights stay gathered for the step, as in torchtitan
            shard(model.model.stack(), self.stages or [model], fsdp_mesh, dtype, reshard_after_forward=layout.pp == 1)
        self.first = any(s.first for s in self.stages)  # this rank's pipeline takes the token ids
        self.owner = not self.stages or any(s.last for s in self.stages)  # this rank computes the loss
        self.owners = d.world // layout.pp  # ranks that do: tp x cp x dp of them
        self.micro_batches = micro_batches
        self._train = self._eval = None

    # ---- what the Trainer asks ----------------------------------------------------------------------
    def loss_context(self):
        """Forward and backward under this context: vocabulary-parallel cross-entropy with tp."""
        if self.layout.tp > 1:
            from torch.distributed.tensor.parallel import loss_parallel

            return loss_parallel()
        return contextlib.nullcontext()

    def context_parallel(self, batch: dict[str, Any]):
        """With cp: the batch's sequences split over the cp ranks (ring attention) for the forward and backward. The
        positions travel with the tokens (each rank's chunks are not contiguous: torch balances the causal work), so
        RoPE sees every token's place in the whole sequence."""
        if self.layout.cp == 1:
            return contextlib.nullcontext()
        import torch
        from torch.distributed.tensor.experimental import context_parallel

        ids = batch["input_ids"]
        if batch.get("position_ids") is None:
            batch["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand_as(ids).contiguous()
        buffers = [ids, batch["labels"], batch["position_ids"]]
        return context_parallel(self.cp_mesh, buffers=buffers, buffer_seq_dims=[1] * len(buffers))

    def pipeline_step(self, batch: dict[str, Any]):
        """One optimizer step's forward and backward through the pipeline (all micro-batches); the mean loss on the last
        stage, None elsewhere."""
        import torch

        from archsmith.network import next_token_loss
        from archsmith.train.parallel import pipeline

        if self._train is None:
            self._train = pipeline.build_schedule(self.stages, self.indices, self.layout.pp, self.layout.schedule,
                                                  self.mesh["pp"].get_group(), self.d.device, self.micro_batches, next_token_loss)
        losses: list = []
        self._train.step(*((batch["input_ids"],) if self.first else ()), target=batch["labels"], losses=losses)
        return torch.stack([whole(x) for x in losses]).mean() if losses else None

    def pipeline_logits(self, input_ids):
        """Forward only (evaluation): logits (B, S, vocab) on the last stage, None elsewhere."""
        from archsmith.train.parallel import pipeline

        if self._eval is None:
            self._eval = pipeline.build_schedule(self.stages, self.indices, self.layout.pp, self.layout.schedule,
                                                 self.mesh["pp"].get_group(), self.d.device, 1, None)
        out = self._eval.step(*((input_ids,) if self.first else ()))
        return out if self.owner else None

    def clip(self, params: list, max_norm: float) -> float:
        """Clip gradients to a global norm over every rank's share (tp, dp and pp); returns the norm before clipping."""
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.d.device)
        norm = whole(norm)
        if self.layout.pp > 1:  # each stage holds other parameters: sum the squares over the stages
            square = norm.pow(2)
            dist.all_reduce(square, group=self.mesh["pp"].get_group())
            norm = square.sqrt()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return float(norm)

    def full_state(self, root: Any) -> dict[str, Any]:
        """The whole model's state dict (keys as `root.state_dict()`), on global rank 0 (a collective; {} elsewhere)."""
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
        state = {k: v.detach().cpu() for k, v in state.items()}
        if self.layout.pp == 1:
            return state if self.d.main else {}
        coords = self.mesh.get_coordinate()  # (pp, dp, cp, tp): the stages' leaders with rank 0 send it their parts
        if any(coords[1:]):
            return {}
        gathered = [None] * self.layout.pp if self.d.main else None
        dist.gather_object(state, gathered, group=self.mesh["pp"].get_group(), group_dst=0)
        merged: dict[str, Any] = {}
        for part in gathered or []:
            merged.update(part)
        return merged


def whole(value: Any) -> Any:
    """A DTensor as one plain tensor (gathered where it is split); anything else as it is."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value
