"""HF checkpoints <-> network.CausalLM: logits parity in both directions, sharding, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_FAMILIES, tiny_model

from archsmith import families
from archsmith.errors import ArchsmithError, ConfigError, SpecError
from archsmith.hfconfig import spec_from_hf
from archsmith.network import CausalLM
from archsmith.weights import INDEX_FILE, CheckpointError

TOL = 1e-5


def batch(seed: int = 0, seq: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows longer than mistral's window of 24; the second is left-padded by 5."""
    x = torch.randint(3, 512, (2, seq), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(x)
    mask[1, :5] = 0
    return x, mask


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def hf_to_ours(tmp_path, family: str, attn: str = "sdpa", **overrides):
    hf = tiny_model(family, attn=attn, **overrides).eval()
    hf.save_pretrained(tmp_path / "hf")
    return hf, CausalLM.from_pretrained(tmp_path / "hf").eval()


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
], ids=lambda r: r["rope_type"])
def test_rope_scalings_match_transformers(tmp_path, rope):
    # max_position_embeddings 32 < seq 40: dynamic NTK rescales the base for this sequence
    hf, ours = hf_to_ours(tmp_path, "llama", rope_parameters={**rope, "rope_theta": 10000.0}, max_position_embeddings=32)
    assert ours.spec.rope_scaling["rope_type"] == rope["rope_type"]
    x, _ = batch(seed=2)
    with torch.no_grad():
        assert max_diff(ours(x).logits, hf(x).logits) <= TOL


def test_tied_embeddings_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM

    hf, ours = hf_to_ours(tmp_path, "qwen3", tie_word_embeddings=True)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    ours.save_pretrained(tmp_path / "back")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    x, _ = batch()
    with torch.no_grad():
        assert max_diff(again(x).logits, hf(x).logits) == 0.0


def test_sharded_checkpoints_both_ways(tmp_path):
    from transformers import AutoModelForCausalLM

    hf = tiny_model("llama", attn="sdpa").eval()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="200KB")
    assert (tmp_path / "hf" / INDEX_FILE).is_file()
    ours = CausalLM.from_pretrained(tmp_path / "hf").eval()
    written = ours.save_pretrained(tmp_path / "ours", max_shard_size=150_000)
    shards = sorted(p.name for p in written if p.name.endswith(".safetensors"))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "ours" / INDEX_FILE).read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in ours.parameters())
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    reread = CausalLM.from_pretrained(tmp_path / "ours")
    x, _ = batch()
    with torch.no_grad():
        ref = hf(x).logits
        assert max_diff(back(x).logits, ref) == 0.0
        assert max_diff(reread(x).logits, ref) <= TOL


def test_bf16_checkpoint_keeps_its_dtype(tmp_path):
    from transformers import AutoModelForCausalLM

    ours = CausalLM.from_spec(spec_from_hf(TINY_FAMILIES["qwen2"]), seed=1, dtype=torch.bfloat16)
    ours.save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    again = CausalLM.from_pretrained(tmp_path / "bf16")
    assert again.lm_head.weight.dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), again.state_dict().values()))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert hf.dtype == torch.bfloat16
    assert torch.equal(hf.model.layers[1].mlp.down_proj.weight, ours.model.layers[1].mlp.down_proj.weight)
    assert CausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).lm_head.weight.dtype == torch.float32


def test_existing_directory_is_not_overwritten_unless_asked(tmp_path):
    ours = CausalLM.from_spec(spec_from_hf(TINY_FAMILIES["llama"]))
    ours.save_pretrained(tmp_path / "m", max_shard_size=150_000)
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    with pytest.raises(ArchsmithError, match="already exists"):
        ours.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before
    ours.save_pretrained(tmp_path / "m", overwrite=True)  # one file now: the old shards and index go
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(CausalLM.from_pretrained(tmp_path / "m").lm_head.weight, ours.lm_head.weight)


# ---- bad checkpoints -----------------------------------------------------------------------

def rewrite(directory, edit) -> None:
    """Load model.safetensors, apply edit(dict), write it back."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors")


@pytest.fixture
def checkpoint(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def error_of(path) -> ArchsmithError:
    with pytest.raises(ArchsmithError) as err:
        CausalLM.from_pretrained(path)
    return err.value


def test_missing_tensor_is_named(checkpoint):
    rewrite(checkpoint, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    err = error_of(checkpoint)
    assert isinstance(err, CheckpointError) and err.field == "model.layers.1.mlp.up_proj.weight"
    assert "missing" in str(err) and "(176, 64)" in str(err)


def test_wrong_shape_is_named(checkpoint):
    rewrite(checkpoint, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": torch.zeros(64, 64)}))
    err = error_of(checkpoint)
    assert err.field == "model.layers.0.self_attn.k_proj.weight" and "(64, 64)" in str(err) and "(32, 64)" in str(err)


def test_unexpected_tensor_is_named(checkpoint):
    rewrite(checkpoint, lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(16)}))
    err = error_of(checkpoint)
    assert err.field == "model.layers.0.self_attn.q_norm.weight" and "unexpected" in str(err)


def test_expert_checkpoints_load_per_expert_or_merged(tmp_path):
    """transformers writes each expert's gate / up / down (Mixtral: w1 / w3 / w2) as its own tensor; a checkpoint
    of the merged 3-D tensors loads too. A missing or surplus expert is named."""
    from safetensors.torch import save_file

    hf = tiny_model("mixtral").eval()
    hf.save_pretrained(tmp_path / "hf")
    per_expert = CausalLM.from_pretrained(tmp_path / "hf").eval()
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, merged / "model.safetensors")
    x, _ = batch()
    with torch.no_grad():
        assert torch.equal(CausalLM.from_pretrained(merged).eval()(x).logits, per_expert(x).logits)
    rewrite(tmp_path / "hf", lambda t: t.pop("model.layers.1.block_sparse_moe.experts.2.w3.weight"))
    err = error_of(tmp_path / "hf")
    assert err.field == "model.layers.1.block_sparse_moe.experts.2.w3.weight" and "missing" in str(err)
    rewrite(tmp_path / "hf", lambda t: t.update({"model.layers.1.block_sparse_moe.experts.9.w3.weight": torch.zeros(48, 64)}))
    err = error_of(tmp_path / "hf")
    assert err.field == "model.layers.1.block_sparse_moe.experts.9.w3.weight" and "4 experts" in str(err)


def test_unknown_and_unsupported_model_types(checkpoint):
    cfg = json.loads((checkpoint / "config.json").read_text())
    for model_type in ("bert", families.with_parity("none")[0]):
        (checkpoint / "config.json").write_text(json.dumps({**cfg, "model_type": model_type}))
        err = error_of(checkpoint)
        assert err.field == "model_type" and model_type in str(err) and ", ".join(families.with_parity("both")) in str(err)


def test_unsupported_rope_scaling_is_refused(checkpoint):
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "factor": 4.0, "rope_theta": 10000.0}
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecError) as err:
        CausalLM.from_pretrained(checkpoint)
    assert err.value.field == "rope_scaling.rope_type" and "longrope" in str(err.value)


def test_missing_files_and_corrupt_weights(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        CausalLM.from_pretrained(tmp_path / "nowhere")
    (checkpoint / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    err = error_of(checkpoint)
    assert err.field == "model.safetensors" and "safetensors" in str(err)
    (checkpoint / "model.safetensors").unlink()
    assert "neither model.safetensors" in str(error_of(checkpoint))
    (checkpoint / INDEX_FILE).write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))
    err = error_of(checkpoint)
    assert err.field == "model-00001-of-00002.safetensors" and "not a file" in str(err)


def test_save_writes_only_families_with_parity(tmp_path):
    """A model built as one family cannot be saved as another: the spec (and so the config) keeps its model_type."""
    ours = CausalLM.from_spec(spec_from_hf(TINY_FAMILIES["llama"]))
    unbuilt = families.with_parity("none")[0]
    object.__setattr__(ours.spec, "model_type", unbuilt)  # what a family without parity would look like to save
    with pytest.raises(CheckpointError) as err:
        ours.save_pretrained(tmp_path / "g")
    assert err.value.field == "model_type" and unbuilt in str(err.value)
    assert not (tmp_path / "g").exists()


class Planted:
    """What a malicious checkpoint carries: unpickling it runs a shell command (here: touch a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_pytorch_bin_checkpoints_load_with_weights_only(checkpoint, tmp_path):
    """A transformers-style pytorch_model.bin (no safetensors) loads, tensor for tensor; sharded too."""
    from safetensors.torch import load_file

    state = load_file(str(checkpoint / "model.safetensors"))
    single, sharded = tmp_path / "bin", tmp_path / "bin-shards"
    for d in (single, sharded):
        d.mkdir()
        (d / "config.json").write_text((checkpoint / "config.json").read_text())
    torch.save(state, single / "pytorch_model.bin")
    names = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2], "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for file, part in halves.items():
        torch.save({n: state[n] for n in part}, sharded / file)
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {n: f for f, part in halves.items() for n in part}}))
    reference = CausalLM.from_pretrained(checkpoint)
    x = torch.randint(0, reference.spec.vocab_size, (2, 8))
    for directory in (single, sharded):
        loaded = CausalLM.from_pretrained(directory)
        with torch.no_grad():
            assert torch.equal(loaded(x).logits, reference(x).logits)


def test_a_planted_pickle_is_refused_and_never_runs(checkpoint, tmp_path):
    import subprocess
    import sys

    from safetensors.torch import load_file

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((checkpoint / "config.json").read_text())
    torch.save({**load_file(str(checkpoint / "model.safetensors")), "payload": Planted(marker)}, evil / "pytorch_model.bin")
    err = error_of(evil)
    assert isinstance(err, CheckpointError) and err.field == "pytorch_model.bin" and "refusing to unpickle" in str(err)
    assert not marker.exists()  # weights_only: the payload never ran
    # the file is a real exploit: an unguarded torch.load runs it (in a child process, so nothing here depends on it)
    code = f"import torch; torch.load({str(evil / 'pytorch_model.bin')!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, timeout=120)
    assert marker.exists()
