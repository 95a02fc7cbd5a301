"""Checkpoints: atomic, keep-last-N, resumable on any number of processes.

RUN/checkpoints/step_000400/ holds everything a run needs to continue exactly:

    model/              the model through the save hook (CausalLM: config.json + safetensors that
                        transformers loads; an HF model: its own save_pretrained)   [single, ddp]
    extra.safetensors   the extra trainable modules (e.g. a distillation projection) [single, ddp]
    dcp/                model + extras + optimizer, sharded, by torch.distributed.checkpoint [fsdp, tp/pp/cp]
                        (names as in the whole model: resumable under any other layout, or on one process)
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
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from archsmith.errors import ArchsmithError
from archsmith.files import HeldDir, fd_path, remove_entry, usual_modes
from archsmith.train.parallel import Dist, barrier

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"step_(\d{6,})")
TRAINER_FILE = "trainer.pt"
EXTRA_FILE = "extra.safetensors"

def _reshardable():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # optimizer state keyed by parameter name, param groups included: a pipeline stage finds its own in any layout's files
    return StateDictOptions(flatten_optimizer_state_dict=True)


SaveModel = Callable[[nn.Module, dict[str, torch.Tensor], Path], None]
LoadModel = Callable[[nn.Module, Path], None]


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def complete(run: HeldDir) -> list[tuple[int, str]]:
    """(step, name) of every complete checkpoint in RUN/checkpoints, oldest first (real directories only)."""
    return sorted((int(m.group(1)), name) for name, kind in run.listdir(CHECKPOINTS)
                  if kind == "dir" and (m := STEP_DIR.fullmatch(name)))


def latest(run: HeldDir) -> str | None:
    found = complete(run)
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


def save(run: HeldDir, step: int, trainer_state: dict[str, Any], modules: nn.Module, optimizer: torch.optim.Optimizer,
         d: Dist, sharded: bool, save_hook: SaveModel, keep: int) -> str:
    """Write checkpoint `step` atomically into RUN/checkpoints (every rank calls this); keep the newest `keep`.

    Every step goes through the held run directory: a `checkpoints` swapped for a symlink is refused, and the
    rotation deletes only real `step_*` directories inside it."""
    name, tmp = step_name(step), f".{step_name(step)}.tmp"
    if d.main:
        with run.dir(CHECKPOINTS, create=True) as root:
            remove_entry(root, tmp)  # left by a run killed mid-write
            for left in os.listdir(root):  # checkpoints a run killed mid-deletion had already set aside
                if left.startswith(".") and left.endswith(DISCARDED):
                    remove_entry(root, left)
            os.mkdir(tmp, 0o777, dir_fd=root)
    barrier(d)
    state = dict(trainer_state)
    with run.dir(f"{CHECKPOINTS}/{tmp}") as fd:
        where = Path(fd_path(fd))  # the held temporary directory, wherever its path leads now
        if sharded:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_sd, optim_sd = get_state_dict(modules, optimizer, options=_reshardable())
            dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(where / "dcp"))
        elif d.main:
            save_hook(modules.model, full_model_state(modules, False), where / "model")
            extra = {k: v for k, v in modules.state_dict().items() if not k.startswith("model.")}
            if extra:
                from safetensors.torch import save_file

                save_file(_distinct(extra), str(where / EXTRA_FILE), metadata={"format": "pt"})
            state["optimizer"] = optimizer.state_dict()
        if d.main:
            _save_pt(state, where / TRAINER_FILE)
        _save_pt(rng_state(), where / f"rng_rank{d.rank}.pt")
        usual_modes(fd)  # safetensors writes 0600; a checkpoint reads like the user's other files
    barrier(d)
    if d.main:
        with run.dir(CHECKPOINTS) as root:
            _discard(root, name)  # the same step saved by an earlier, interrupted attempt
            run.check()
            os.rename(tmp, name, src_dir_fd=root, dst_dir_fd=root)
            os.fsync(root)
            for _, old in complete(run)[:-keep]:
                _discard(root, old)
    barrier(d)
    return f"{CHECKPOINTS}/{name}"


DISCARDED = ".discarded"


def _discard(root: int, name: str) -> None:
    """Delete checkpoint `name`: renamed aside first (atomic), then removed, so a run killed mid-deletion never leaves
    a half-deleted directory under a checkpoint's name."""
    aside = f".{name}{DISCARDED}"
    remove_entry(root, aside)
    try:
        os.rename(name, aside, src_dir_fd=root, dst_dir_fd=root)
    except FileNotFoundError:
        return
    remove_entry(root, aside)


def read(run: HeldDir, name: str, rank: int) -> dict[str, Any]:
    """What checkpoint `name` holds for this rank, read and checked before anything is restored: {"trainer": the
    trainer state, "rng": this rank's RNG states or None, "extra": extra modules' tensors or None, "kinds": its
    entries}; every model safetensors file's header is checked against its size (the load hook reads the tensors).
    Raises ArchsmithError naming the file when one is torn, unreadable or holds pickled objects."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    shown = f"{CHECKPOINTS}/{name}"
    with run.dir(shown) as fd:
        where = Path(fd_path(fd))
        files = dict(run.listdir(shown))
        out: dict[str, Any] = {"trainer": _load_pt(where / TRAINER_FILE, f"{shown}/{TRAINER_FILE}")}
        rng = f"rng_rank{rank}.pt"
        out["rng"] = _load_pt(where / rng, f"{shown}/{rng}") if files.get(rng) == "file" else None
        out["extra"] = None
        if files.get(EXTRA_FILE) == "file":
            try:
                out["extra"] = load_file(str(where / EXTRA_FILE))
            except (SafetensorError, OSError, ValueError) as exc:
                raise ArchsmithError("resume", f"{shown}/{EXTRA_FILE} is torn or not safetensors ({_first_line(exc)})") from None
        for name, _ in run.listdir(f"{shown}/model") if files.get("model") == "dir" else []:
            if name.endswith(".safetensors"):
                try:  # the header, and every tensor's offsets inside the file's size: a cut file fails here
                    with safe_open(str(where / "model" / name), framework="pt") as fh:
                        fh.keys()
                except (SafetensorError, OSError, ValueError) as exc:
                    raise ArchsmithError("resume", f"{shown}/model/{name} is torn or not safetensors ({_first_line(exc)})") from None
        out["kinds"] = files
    return out


def load(run: HeldDir, name: str, modules: nn.Module, optimizer: torch.optim.Optimizer, d: Dist, sharded: bool,
         load_hook: LoadModel, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Restore modules, optimizer and this rank's RNG from checkpoint `name` (`saved`: what `read` returned for it);
    returns the trainer state."""
    saved = saved or read(run, name, d.rank)
    state, kinds, shown = saved["trainer"], saved["kinds"], f"{CHECKPOINTS}/{name}"
    with run.dir(shown) as fd:
        where = Path(fd_path(fd))
        if kinds.get("dcp") == "dir":  # sharded state: onto this layout's shards, or whole onto one process
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            if not sharded and d.world > 1:
                raise ArchsmithError("resume", f"{shown} holds sharded state; resume it with --strategy fsdp (or on one process)")
            model_sd, optim_sd = get_state_dict(modules, optimizer, options=_reshardable())
            loaded = {"model": model_sd, "optimizer": optim_sd}
            dcp.load(loaded, checkpoint_id=str(where / "dcp"))
            set_state_dict(modules, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"],
                           options=_reshardable())
        else:
            if sharded:
                raise ArchsmithError("resume", f"{shown} was written by one process or DDP; resume it that way "
                                               "(--strategy ddp, no --tp/--pp/--cp)")
            load_hook(modules.model, where / "model")
            if saved["extra"] is not None:
                modules.load_state_dict(saved["extra"], strict=False)
            optimizer.load_state_dict(state.pop("optimizer"))
    if saved["rng"] is not None:  # a run resumed on more ranks than it saved: new ranks keep their seeded state
        set_rng_state(saved["rng"])
    return state


def _load_pt(path: Path, shown: str) -> Any:
    """A .pt file of tensors and plain values (weights_only); one line naming the file when it is anything else."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArchsmithError("resume", f"{shown} is missing") from None
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # not a class or function: garbage pickle opcodes
            raise ArchsmithError("resume", f"{shown} is torn or not a checkpoint file ({_first_line(exc)})") from None
        raise ArchsmithError("resume", f"{shown} holds objects other than tensors and plain values; refused "
                                       "(archsmith never unpickles code)") from None
    except Exception as exc:  # torch's safe unpickler fails on garbage in many ways (EOF, IndexError, KeyError, ...)
        raise ArchsmithError("resume", f"{shown} is torn or not a checkpoint file ({type(exc).__name__}: "
                                       f"{_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def _save_pt(obj: Any, path: Path) -> None:
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
