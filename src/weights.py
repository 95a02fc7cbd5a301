"""Hugging Face checkpoints <-> `network.CausalLM`: config.json + safetensors, sharded or not.

Our parameter names are transformers' names, so loading is a check of names and shapes
against the model the config describes, never a conversion. Where a family's layout differs from
the Llama layout network.py uses, its row in `archsmith.families` says how (`renames`; experts or
layer projections stored transposed) and these rules are applied on the way in and out. Weights are
read from safetensors; a directory with only `pytorch_model.bin` (or its shards) is read through
`torch.load(weights_only=True)`, which unpickles tensors and plain containers and refuses anything else.
No remote code runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from archsmith import families
from archsmith.errors import ArchsmithError
from archsmith.files import fd_path, kind, open_file, read_text, write_files
from archsmith.hfconfig import hf_from_spec, read_config, spec_from_hf
from archsmith.network import CausalLM
from archsmith.units import parse_bytes

# Families whose checkpoints load into network.CausalLM with logits parity, and those it also saves.
LOADS = families.with_parity("both", "load")
SAVES = families.with_parity("both")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# PyTorch pickles, read only when a directory has no safetensors: torch.load(weights_only=True) unpickles tensors and
# plain containers and refuses every other global, so a planted pickle cannot run code
BIN_FILE, BIN_INDEX_FILE = "pytorch_model.bin", "pytorch_model.bin.index.json"
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class CheckpointError(ArchsmithError):
    """A checkpoint directory cannot be loaded as the model its config describes."""


def load_pretrained(path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> CausalLM:
    """Load `path` (config.json + model.safetensors or a sharded index) into a CausalLM.

    dtype None keeps the checkpoint's dtype. Every tensor of the model must be present with
    the config's shape; extra tensors are an error (a tied lm_head copy is accepted).
    """
    path = Path(path)
    cfg = read_config(path)
    model_type = cfg.get("model_type")
    if model_type not in LOADS:
        raise CheckpointError("model_type", f"loading supports {', '.join(LOADS)}; got {model_type!r:.60}")
    spec = spec_from_hf(cfg)
    fam = families.get(model_type)
    with torch.device("meta"):
        model = CausalLM(spec)
    expected = _state(model)
    state: dict[str, torch.Tensor] = {}
    for stored, tensor in _merge_experts(fam, _read_tensors(path), spec.moe.num_experts if spec.moe else 0):
        name = ours(fam, stored)
        if name not in expected:
            if name == "lm_head.weight" and spec.tie_embeddings or name.endswith("rotary_emb.inv_freq"):
                continue
            raise CheckpointError(stored, f"unexpected tensor: not part of a {model_type} model with this config.json")
        want = tuple(flip(fam, name, expected[name]).shape)  # in the stored layout
        if tuple(tensor.shape) != want:
            raise CheckpointError(stored, f"has shape {tuple(tensor.shape)}; config.json implies {want}")
        state[name] = flip(fam, name, tensor).to(device=device, dtype=dtype or tensor.dtype)
    missing = [name for name in expected if name not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        want = tuple(flip(fam, missing[0], expected[missing[0]]).shape)
        raise CheckpointError(theirs(fam, missing[0]), f"missing from the checkpoint{more}; shape {want} expected")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model  # every tensor was converted to `dtype` as it was read


def _state(model: CausalLM) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers by name (router score corrections are buffers); a tied lm_head is not listed."""
    state = model.state_dict(keep_vars=True)
    if model.spec.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def _merge_experts(fam: families.Family, tensors, num_experts: int):
    """Yield (name, tensor) with per-expert checkpoint tensors (`...experts.{j}.<gate|up|down>.weight`, the family's
    `expert_names`) merged into the 3-D `experts.gate_up_proj` (gate rows, then up rows) and `experts.down_proj`,
    as transformers 5 does on load; every other tensor passes through."""
    if fam.expert_names is None:
        yield from tensors
        return
    pattern = re.compile(rf"(.*\.experts)\.(\d+)\.({'|'.join(map(re.escape, fam.expert_names))})\.weight")
    pieces: dict[str, dict[tuple[str, int], torch.Tensor]] = {}
    for name, tensor in tensors:
        match = pattern.fullmatch(name)
        if match is None:
            yield name, tensor
            continue
        prefix, index, role = match.group(1), int(match.group(2)), match.group(3)
        if index >= num_experts:
            raise CheckpointError(name, f"unexpected tensor: expert {index} of a model with {num_experts} experts")
        pieces.setdefault(prefix, {})[(role, index)] = tensor
    gate, up, down = fam.expert_names
    for prefix, parts in pieces.items():
        roles = [gate, up] if any(role == gate for role, _ in parts) else [up]  # gelu experts have no gate
        for role in (*roles, down):
            absent = [j for j in range(num_experts) if (role, j) not in parts]
            if absent:
                raise CheckpointError(f"{prefix}.{absent[0]}.{role}.weight", f"missing from the checkpoint ({len(absent)} experts lack {role})")
        yield f"{prefix}.gate_up_proj", torch.cat([torch.stack([parts[(r, j)] for j in range(num_experts)]) for r in roles], dim=1)
        yield f"{prefix}.down_proj", torch.stack([parts[(down, j)] for j in range(num_experts)])


def _split_experts(fam: families.Family, name: str, tensor: torch.Tensor, gated: bool) -> dict[str, torch.Tensor]:
    """Our tensor `name` as the family's checkpoint stores it: per-expert 2-D tensors where it has `expert_names`."""
    if fam.expert_names is None or not name.endswith(("experts.gate_up_proj", "experts.down_proj")):
        return {name: tensor}
    prefix, gate, up, down = name.rsplit(".", 1)[0], *fam.expert_names
    if name.endswith("down_proj"):
        return {f"{prefix}.{j}.{down}.weight": t.clone() for j, t in enumerate(tensor)}
    halves = tensor.chunk(2, dim=1) if gated else (tensor,)
    return {f"{prefix}.{j}.{role}.weight": half[j].clone() for role, half in zip((gate, up) if gated else (up,), halves)
            for j in range(tensor.shape[0])}


def theirs(fam: families.Family, name: str) -> str:
    """transformers' name of our tensor `name` in the family's layout."""
    for mine, hf in fam.renames:
        name = name.replace(mine, hf)
    return name


def ours(fam: families.Family, name: str) -> str:
    """Our name of the family's tensor `name` (the renames undone in reverse order)."""
    for mine, hf in reversed(fam.renames):
        name = name.replace(hf, mine)
    return name


def flip(fam: families.Family, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in the other layout where the family stores it transposed (our name): 3-D experts
    (E, in, out) or GPT-2's Conv1D (in, out) layer projections; unchanged otherwise. Its own inverse."""
    expert = name.endswith(("experts.gate_up_proj", "experts.down_proj"))
    if fam.experts_transposed and expert or fam.linear_transposed and tensor.dim() == 2 and ".layers." in name and not expert:
        return tensor.transpose(-1, -2)
    return tensor


def _shards(path: Path, index_file: str, single_file: str) -> dict[str, list[str] | None] | None:
    """{shard file: tensor names (None: all)} from an index or a single file; None when the directory has neither."""
    if kind(path / index_file, index_file) == "file":
        try:
            weight_map = json.loads(read_text(path / index_file, index_file))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(index_file, f"is not a valid checkpoint index (needs a weight_map object): {exc}") from None
        shards: dict[str, list[str] | None] = {}
        for name, shard in weight_map.items():
            shards.setdefault(shard, []).append(name)
        return shards
    return {single_file: None} if kind(path / single_file, single_file) == "file" else None


def _read_tensors(path: Path):
    """Yield (name, tensor) from model.safetensors or the shards its index lists, else from pytorch_model.bin (or its
    shards) unpickled with weights_only=True; read through the workspace boundary."""
    pickled = False
    shards = _shards(path, INDEX_FILE, SINGLE_FILE)
    if shards is None:
        shards, pickled = _shards(path, BIN_INDEX_FILE, BIN_FILE), True
    if shards is None:
        raise CheckpointError("weights", f"{path} has neither {SINGLE_FILE} nor {INDEX_FILE} (nor {BIN_FILE} or its index)")
    index = BIN_INDEX_FILE if pickled else INDEX_FILE
    for shard, names in shards.items():
        file = path / shard
        if Path(shard).name != shard or kind(file, shard) != "file":
            raise CheckpointError(shard, f"listed in {index} but not a file in {path}")
        with open_file(file, shard) as opened:
            yield from _shard_tensors(fd_path(opened.fileno()), shard, names, index, pickled)


def _shard_tensors(file: str, shard: str, names: list[str] | None, index: str, pickled: bool):
    """(name, tensor) of one shard: the names its index lists, in order (a single file: all, sorted)."""
    from contextlib import nullcontext

    from safetensors import safe_open

    try:
        with nullcontext(_unpickled(file, shard)) if pickled else safe_open(file, framework="pt", device="cpu") as fh:
            present = set(fh.keys())
            for name in names if names is not None else sorted(present):
                if name not in present:
                    raise CheckpointError(name, f"listed in {index} for {shard} but not in that file")
                yield name, fh[name] if pickled else fh.get_tensor(name)
    except ArchsmithError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(shard, f"is not a readable safetensors file: {exc}") from None


def _unpickled(file: str, shown: str) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin as {name: tensor}, through torch.load(weights_only=True): tensors and plain containers only."""
    import pickle

    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(shown, f"holds more than tensors; refusing to unpickle it (weights_only): {first}") from None
    except Exception as exc:
        raise CheckpointError(shown, f"is not a readable PyTorch checkpoint: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(shown, "is not a state dict of named tensors")
    return state


def save_pretrained(model: CausalLM, path: str | Path, max_shard_size: int | str = "5GB", overwrite: bool = False) -> list[Path]:
    """Write config.json and safetensors (one file, or shards + index beyond max_shard_size) atomically.

    transformers' `AutoModelForCausalLM.from_pretrained(path)` loads the result as the same model.
    With `overwrite`, weight files of an earlier save that the new one does not use are removed; other files stay.
    """
    spec = model.spec
    if spec.model_type not in SAVES:
        raise CheckpointError("model_type", f"saving supports {', '.join(SAVES)}; got {spec.model_type!r}")
    dtype = model.lm_head.weight.dtype
    if dtype not in DTYPE_NAMES:
        raise CheckpointError("dtype", f"must be one of {', '.join(DTYPE_NAMES.values())}; got {dtype}")
    config = hf_from_spec(spec, dtype=DTYPE_NAMES[dtype])
    limit = parse_bytes(max_shard_size, "max_shard_size") if isinstance(max_shard_size, str) else int(max_shard_size)
    if limit <= 0:
        raise CheckpointError("max_shard_size", f"must be positive, got {max_shard_size!r}")
    fam = families.get(spec.model_type)
    tensors = {theirs(fam, stored): t.contiguous() for name, p in _state(model).items()
               for stored, t in _split_experts(fam, name, flip(fam, name, p.detach()), spec.gated).items()}
    shards = _shard(tensors, limit)
    files: dict = {"config.json": json.dumps(config, indent=2) + "\n"}
    if len(shards) == 1:
        files[SINGLE_FILE] = _safetensors_writer(shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            files[name] = _safetensors_writer(shard)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        files[INDEX_FILE] = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    return write_files(path, files, overwrite=overwrite, stale=("model*.safetensors*",))


def _shard(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """Split in order into groups of at most `limit` bytes (a larger single tensor gets its own shard)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def _safetensors_writer(tensors: dict[str, torch.Tensor]):
    def write(file: Path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(file), metadata={"format": "pt"})

    return write
