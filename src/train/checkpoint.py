"""Checkpoints: atomic, keep-last-N, resumable on any number of processes.

RUN/checkpoints/step_000400/ holds everything a run needs to continue exactly:

    model/              the model through the save hook (CausalLM: config.json + safetensors that
                        transformers loads; an HF model: its own save_pretrained)   [single, ddp]
    extra.safetensors   the extra trainable modules (e.g. a distillation projection) [single, ddp]
    dcp/                model + extras + optimizer, sharded, by torch.distributed.checkpoint [fsdp]
    trainer.pt          optimizer (single, ddp), LR scheduler, grad scaler, step, tokens seen,
                        early-stopping state, the run's config
    rng_rank{r}.pt      each rank's torch / CUDA / Python RNG states

Everything is written into `.step_000400.tmp/` and renamed to `step_000400/` when whole, so a
process killed mid-write leaves the previous checkpoint as it was; a directory named `step_*` is
complete by construction. `.pt` files hold tensors and plain Python values only and are read with
`torch.load(weights_only=True)`. The data position is the step: batches are a function of it.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from archsmith.errors import ArchsmithError
from archsmith.train.parallel import Dist, barrier

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"step_(\d{6,})")
TRAINER_FILE = "trainer.pt"
EXTRA_FILE = "extra.safetensors"

SaveModel = Callable[[nn.Module, dict[str, torch.Tensor], Path], None]
LoadModel = Callable[[nn.Module, Path], None]


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:06d}"


def complete(root: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every complete checkpoint under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.fullmatch(p.name))]
    return sorted(found)


def latest(root: Path) -> Path | None:
    found = complete(root)
    return found[-1][1] if found else None


# ---- model hooks --------------------------------------------------------------------------------

def save_model(model: nn.Module, state_dict: dict[str, torch.Tensor], directory: Path) -> None:
    """Default save hook: a CausalLM through network.py's save_pretrained, a transformers model through its
    own save_pretrained, anything else as model.safetensors. `state_dict` holds full (unsharded) tensors."""
    from archsmith.network import CausalLM

    if isinstance(model, CausalLM):
        with torch.device("meta"):
            clone = CausalLM(model.spec)
        clone.load_state_dict(state_dict, strict=False, assign=True)
        clone.tie_weights()
        clone.save_pretrained(directory)
    elif hasattr(model, "save_pretrained"):
        model.save_pretrained(directory, state_dict=state_dict)
    else:
        from safetensors.torch import save_file

        directory.mkdir(parents=True)
        save_file(_distinct(state_dict), str(directory / "model.safetensors"), metadata={"format": "pt"})


def load_model(model: nn.Module, directory: Path) -> None:
    """Default load hook: every *.safetensors in `directory` into `model`; keys missing from the files
    must be tied to keys present (a tied lm_head)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(file)))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape mismatch: the checkpoint belongs to another model
        raise ArchsmithError("resume", f"{directory} does not fit this model: {str(exc).splitlines()[-1].strip()}") from None
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[0]
        raise ArchsmithError("resume", f"{directory} does not fit this model: {'missing' if missing else 'unexpected'} tensor {bad}")


def _distinct(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop later names of tensors that share storage (safetensors refuses shared tensors)."""
    seen, out = set(), {}
    for name, t in state.items():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out[name] = t.detach().contiguous()
    return out


# ---- state --------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_model_state(modules: nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """The model's full state dict (keys without the `model.` prefix); with FSDP, gathered on rank 0 only
    (a collective: every rank calls it; the others get an empty dict)."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(modules, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = modules.state_dict()
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def save(root: Path, step: int, trainer_state: dict[str, Any], modules: nn.Module, optimizer: torch.optim.Optimizer,
         d: Dist, sharded: bool, save_hook: SaveModel, keep: int) -> Path:
    """Write checkpoint `step` atomically (every rank calls this); keep the newest `keep`."""
    final, tmp = step_dir(root, step), root / f".step_{step:06d}.tmp"
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-write
        tmp.mkdir(parents=True)
    barrier(d)
    state = dict(trainer_state)
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(modules, optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    elif d.main:
        save_hook(modules.model, full_model_state(modules, False), tmp / "model")
        extra = {k: v for k, v in modules.state_dict().items() if not k.startswith("model.")}
        if extra:
            from safetensors.torch import save_file

            save_file(_distinct(extra), str(tmp / EXTRA_FILE), metadata={"format": "pt"})
        state["optimizer"] = optimizer.state_dict()
    if d.main:
        _save_pt(state, tmp / TRAINER_FILE)
    _save_pt(rng_state(), tmp / f"rng_rank{d.rank}.pt")
    barrier(d)
    if d.main:
        if final.exists():  # the same step saved by an earlier, interrupted attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in complete(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


def load(path: Path, modules: nn.Module, optimizer: torch.optim.Optimizer, d: Dist, sharded: bool,
         load_hook: LoadModel) -> dict[str, Any]:
    """Restore modules, optimizer and this rank's RNG from checkpoint `path`; returns the trainer state."""
    state = torch.load(path / TRAINER_FILE, map_location="cpu", weights_only=True)
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        if not (path / "dcp").is_dir():
            raise ArchsmithError("resume", f"{path} was written without FSDP; resume it with --strategy ddp")
        model_sd, optim_sd = get_state_dict(modules, optimizer)
        loaded = {"model": model_sd, "optimizer": optim_sd}
        dcp.load(loaded, checkpoint_id=str(path / "dcp"))
        set_state_dict(modules, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
    else:
        if not (path / "model").is_dir():
            raise ArchsmithError("resume", f"{path} holds sharded FSDP state; resume it with --strategy fsdp")
        load_hook(modules.model, path / "model")
        if (path / EXTRA_FILE).is_file():
            from safetensors.torch import load_file

            modules.load_state_dict(load_file(str(path / EXTRA_FILE)), strict=False)
        optimizer.load_state_dict(state.pop("optimizer"))
    rng = path / f"rng_rank{d.rank}.pt"
    if rng.is_file():  # a run resumed on more ranks than it saved: new ranks keep their seeded state
        set_rng_state(torch.load(rng, map_location="cpu", weights_only=True))
    return state


def _save_pt(obj: Any, path: Path) -> None:
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
