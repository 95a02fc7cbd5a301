"""Parallelism applied from outside the model: process groups, DDP, FSDP2, and torchrun launch commands.

The model (`archsmith.network.CausalLM`, or any nn.Module) knows nothing of distribution. Under
`torchrun` (WORLD_SIZE > 1 in the environment) `setup` starts the process group (NCCL on GPUs,
gloo on CPUs) and `wrap` applies the strategy:

- ddp: `DistributedDataParallel` over the whole module; gradients all-reduced in buckets.
- fsdp: FSDP2 `fully_shard` on each decoder block (the repeated modules of the largest
  ModuleList), then on the root; parameters, gradients and optimizer state sharded across ranks
  (ZeRO-3). With bf16 a `MixedPrecisionPolicy` gathers bf16 parameters and reduces in fp32.

`torchrun_command` / `launch_plan` write the command lines that start a run on one or many
machines, as torchrun documents them.
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("ddp", "fsdp")
GPUS_PER_NODE = 8  # the usual HGX/DGX node; multi-node commands assume it
RDZV_PORT = 29400  # torchrun's documented default rendezvous port for c10d


@dataclass
class Dist:
    """Where this process stands: rank, world size, local rank and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: Any = "cpu"  # torch.device
    started: bool = False  # this module started the process group (and so destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup() -> Dist:
    """Join the process group torchrun describes in the environment (a single process needs none)."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if not under_torchrun():
        return Dist(device=torch.device("cuda", 0) if cuda else torch.device("cpu"))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Dist(rank=rank, world=world, local_rank=local, device=device, started=started)


def teardown(d: Dist, sync: bool = False) -> None:
    """Leave the process group. `sync` (after a run that ended well): wait for every rank first, so that no rank
    tears down its communication threads while another still writes the final model or summary; after a failure
    the other ranks may be gone, so no barrier."""
    import torch.distributed as dist

    if d.started and dist.is_initialized():
        if sync and d.world > 1:
            dist.barrier()
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    import torch.distributed as dist

    if d.world > 1:
        dist.barrier()


def all_reduce_sum(tensor, d: Dist):
    """Sum `tensor` over ranks in place (a no-op for one process); returns it."""
    import torch.distributed as dist

    if d.world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def blocks(model) -> list:
    """The repeated blocks of `model`: children of its largest ModuleList whose children share one class
    (CausalLM: model.layers; BERT: encoder.layer). Empty when it has none."""
    from torch import nn

    best: list = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best) and len({type(m) for m in module}) == 1:
            best = list(module)
    return best


def wrap(modules, strategy: str, d: Dist, param_dtype=None, unused_parameters: bool = False):
    """Apply `strategy` to `modules` (already on d.device); returns what to call for forward."""
    if d.world == 1:
        return modules
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(modules, device_ids=[d.device] if d.device.type == "cuda" else None,
                                       find_unused_parameters=unused_parameters)
    from torch.distributed.device_mesh import init_device_mesh

    shard(blocks(modules.model), [modules], init_device_mesh(d.device.type, (d.world,)), param_dtype)
    return modules


def shard(layers: list, roots: list, mesh: Any, param_dtype: Any = None, reshard_after_forward: bool = True) -> None:
    """FSDP2 `fully_shard` on each of `layers`, then on each root, over `mesh`; with `param_dtype` a mixed-precision policy
    that gathers parameters in it and reduces gradients in fp32."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for module in [*layers, *roots]:
        fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)


def gradient_sync(wrapped, strategy: str, d: Dist, enabled: bool):
    """A context in which backward reduces gradients across ranks (`enabled`) or only accumulates them."""
    import contextlib

    if d.world == 1 or enabled:
        if strategy == "fsdp" and d.world > 1:
            wrapped.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if strategy == "ddp":
        return wrapped.no_sync()
    wrapped.set_requires_gradient_sync(False)
    return contextlib.nullcontext()


# ---- launch commands ----------------------------------------------------------------------------

def torchrun_command(train_args: list[str], nproc: int, nodes: int = 1, endpoint: str = "$MASTER_ADDR") -> str:
    """The torchrun command line that runs `python -m archsmith.train <train_args>` on nodes x nproc processes."""
    if nodes == 1:
        head = ["torchrun", "--standalone", "--nproc_per_node", str(nproc)]
    else:
        head = ["torchrun", "--nnodes", str(nodes), "--nproc_per_node", str(nproc), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"{endpoint}:{RDZV_PORT}", "--rdzv-id", "archsmith"]
    return " ".join(a if a.startswith("$") else shlex.quote(a) for a in [*head, "-m", "archsmith.train", *train_args])


def nodes_for(gpus: int) -> int:
    """Nodes of equal size (equal processes per node) holding `gpus` GPUs, at most GPUS_PER_NODE each."""
    return next(n for n in range(math.ceil(gpus / GPUS_PER_NODE), gpus + 1) if gpus % n == 0)


def launch_plan(setup: dict[str, Any], model_dir: str, tokens: int, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """The exact command that trains a design the way its capacity plan sized it.

    `setup` is the design's training setting (`design.choose_training`: strategy, checkpointing, micro-batch,
    seq, GPUs). DDP stays DDP; ZeRO-1/2/3 and FSDP run as FSDP2 full shard, which needs no more memory per GPU
    than any of them; one GPU runs without a process group. With `recipe` (`design.training_recipe`) the global batch
    is its tokens per step (micro-batch x gradient accumulation x GPUs), its steps, and the flags of its learning rate,
    warmup and decay; without, one micro-batch per GPU and the train defaults. The step count covers `tokens`.
    """
    gpus, micro_batch, seq = setup["gpus"], setup["micro_batch"], setup["seq"]
    nodes = nodes_for(gpus)
    per_node = gpus // nodes
    if gpus == 1:
        strategy, why = "single", "one GPU: no data parallelism"
    elif setup["strategy"] == "ddp":
        strategy, why = "ddp", "the plan's DDP: a full replica fits one GPU, one gradient all-reduce per step"
    else:
        strategy, why = "fsdp", (f"the plan's {setup['strategy']}, run as FSDP2 full shard (weights, gradients and optimizer "
                                 "state sharded: no more memory per GPU than the plan)")
    if recipe is None:
        batch = micro_batch * gpus
        steps = max(1, math.ceil(tokens / (batch * seq)))
    else:
        batch, steps = recipe["tokens_per_step"] // seq, recipe["steps"]
    args = [model_dir, "--data", "CORPUS", "--out", f"{model_dir.rstrip('/')}-run", "--seq", str(seq),
            "--batch", str(batch), "--micro-batch", str(micro_batch), "--steps", str(steps), "--precision", "bf16"]
    if recipe is not None:
        from archsmith.design import recipe_flags

        args += recipe_flags(recipe)
    if strategy != "single":
        args += ["--strategy", strategy]
    if setup["checkpointing"]:
        args.append("--checkpointing")
    command = (f"archsmith train {' '.join(shlex.quote(a) for a in args)}" if strategy == "single"
               else torchrun_command(args, per_node, nodes))
    return {"strategy": strategy, "why": why, "nodes": nodes, "gpus_per_node": per_node, "global_batch": batch,
            "grad_accum": batch // (micro_batch * gpus), "seq": seq, "steps": steps, "checkpointing": setup["checkpointing"],
            "command": command}
