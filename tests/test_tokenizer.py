"""A real tokenizer, trained with `tokenizers`, feeds vocab size and special ids into the design."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from archsmith.errors import ConfigError
from archsmith.tokenizer import read_tokenizer


def make_tokenizer(directory, vocab=300, config=None):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    text = ["the quick brown fox jumps over the lazy dog", "a model is computed, not guessed"] * 50
    tok.train_from_iterator(text, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": 2048}
    (directory / "tokenizer_config.json").write_text(json.dumps(config if config is not None else cfg))
    return tok


def test_reads_ids_and_vocab(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    info = read_tokenizer(tmp_path / "tok")
    assert info.vocab_size == tok.get_vocab_size()
    assert (info.pad_token_id, info.bos_token_id, info.eos_token_id, info.unk_token_id) == (0, 1, 2, 3)
    assert info.model_max_length == 2048


def test_missing_artifacts_and_tokens(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer.json is missing"):
        read_tokenizer(tmp_path)
    make_tokenizer(tmp_path / "noeos", config={"bos_token": "<s>"})
    with pytest.raises(ConfigError) as info:
        read_tokenizer(tmp_path / "noeos")
    assert info.value.field == "eos_token" and "noeos" in str(info.value)
    make_tokenizer(tmp_path / "ghost", config={"eos_token": "<|end|>"})
    with pytest.raises(ConfigError, match="not in the vocabulary"):
        read_tokenizer(tmp_path / "ghost")


def test_design_uses_tokenizer(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "archsmith.cli", "design", "--params", "100M", "--context", "4096",
                             "--tokenizer", str(tmp_path / "tok"), "--out", str(out), "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    cfg = json.loads((out / "config.json").read_text())
    vocab = tok.get_vocab_size()
    assert cfg["vocab_size"] == -(-vocab // 128) * 128 >= vocab  # padded up to a multiple of 128
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 0)
    report = (out / "architecture_report.md").read_text()
    assert "model_max_length is 2048, shorter than the context 4096" in report
