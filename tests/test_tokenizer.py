"""Real tokenizers: trained by `archsmith tokenizer train` (and by hand), read by the design step."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archsmith.errors import ConfigError
from archsmith.tokenizer import read_tokenizer
from conftest import STORIES


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
    assert "config.json carries bos 1, eos 2, pad 0 (unk 3 is the tokenizer's own" in report and "unk_token_id" not in cfg


# ---- training -----------------------------------------------------------------------------------

CORPUS_DOCS = STORIES.read_text(encoding="utf-8").strip().split("\n\n")


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def trained(request, tmp_path_factory):
    from archsmith.files import write_files
    from archsmith.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp(request.param) / "tok"
    files, report = train_tokenizer([STORIES], 400 if request.param == "bpe" else 300, kind=request.param,
                                    special=["<|tool|>"], max_length=1024, progress=False)
    write_files(out, files)
    return request.param, out, report


def test_trained_tokenizer_loads_and_round_trips(trained):
    import numpy as np
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    kind, out, report = trained
    fast = Tokenizer.from_file(str(out / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(out)
    assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id, auto.unk_token_id) == (0, 1, 2, 3)
    assert auto.convert_tokens_to_ids("<|tool|>") == 4 and auto.model_max_length == 1024
    held = CORPUS_DOCS[19::20]  # every 20th document was held out of training
    for doc in held:
        ids = auto(doc, add_special_tokens=False).input_ids
        assert ids == fast.encode(doc, add_special_tokens=False).ids
        assert auto.decode(ids) == doc
    assert auto("call <|tool|> now").input_ids.count(4) == 1  # a special token stays one token
    info = read_tokenizer(out)
    assert info.vocab_size == report["vocab_size"] == fast.get_vocab_size() and info.eos_token_id == 2
    lengths = [len(fast.encode(d, add_special_tokens=False).ids) for d in held]  # the report, measured again
    assert report["measured_on"] == "held-out documents" and report["held_out"]["documents"] == len(held)
    assert report["held_out"]["characters_per_token"] == round(sum(map(len, held)) / sum(lengths), 4)
    assert report["document_tokens"]["p90"] == float(np.percentile(lengths, 90)) and report["document_tokens"]["max"] == max(lengths)
    assert info.document_tokens == report["document_tokens"]


@functools.cache
def bpe_on_stories():
    from tokenizers import Tokenizer

    from archsmith.tokenizer import train_tokenizer

    files, _ = train_tokenizer([STORIES], 400, progress=False)
    return Tokenizer.from_str(files["tokenizer.json"])


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=200))
def test_byte_level_bpe_round_trips_any_text(text):
    tok = bpe_on_stories()  # trained on English stories; any Unicode still round-trips through bytes
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text


def test_design_copies_the_tokenizer(tmp_path, trained):
    from transformers import AutoConfig, AutoTokenizer

    kind, tok_dir, report = trained
    if kind != "bpe":
        pytest.skip("one kind is enough for the design step")
    out = tmp_path / "design"
    result = subprocess.run([sys.executable, "-m", "archsmith.cli", "design", "--params", "5M", "--tokenizer", str(tok_dir),
                             "--out", str(out), "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer_report.json"):
        assert (out / name).read_bytes() == (tok_dir / name).read_bytes()
    config, auto = AutoConfig.from_pretrained(out), AutoTokenizer.from_pretrained(out)  # one Hugging Face model directory
    assert config.vocab_size >= len(auto) and config.eos_token_id == auto.eos_token_id == 2
    p99 = report["document_tokens"]["p99"]
    assert f"/ {p99:.0f} tokens at p50 / p90 / p99" in json.loads(result.stdout)["context_check"]


def test_training_refuses_bad_input(tmp_path):
    from typer.testing import CliRunner

    from archsmith.cli import app

    def refused(*args, field: str) -> None:
        result = CliRunner().invoke(app, ["tokenizer", "train", *map(str, args)])
        assert result.exit_code == 2 and result.stdout == "", result.output
        assert result.stderr.strip().startswith(f"error: {field}:") and len(result.stderr.strip().splitlines()) == 1

    (tmp_path / "empty.txt").write_text("\n\n\n")
    refused(tmp_path / "empty.txt", "--vocab", 300, "--out", tmp_path / "a", field="corpus")
    refused(STORIES, "--vocab", 100, "--out", tmp_path / "b", field="vocab")
    refused(STORIES, "--vocab", 300, "--kind", "wordpiece", "--out", tmp_path / "c", field="kind")
    refused(STORIES, "--vocab", 300, "--special", "<s>", "--out", tmp_path / "d", field="special")
    refused(tmp_path / "missing", "--vocab", 300, "--out", tmp_path / "e", field="corpus")
    assert not any((tmp_path / n).exists() for n in "abcde")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "tokenizer.json").write_text("{}")
    refused(STORIES, "--vocab", 300, "--out", tmp_path / "taken", field="out")
    assert (tmp_path / "taken" / "tokenizer.json").read_text() == "{}"


def test_a_vocabulary_smaller_than_asked_is_a_warning(tmp_path):
    """Unigram on a small corpus yields fewer pieces than asked: the report and the CLI say so."""
    from archsmith.tokenizer import train_tokenizer

    corpus = tmp_path / "small.txt"
    corpus.write_text("the cat sat on the mat.\n\nthe dog sat on the log.\n\n" * 20)
    files, report = train_tokenizer([corpus], 500, kind="unigram", progress=False)
    assert report["vocab_size"] < 500 and report["warnings"] == [
        f"asked for 500 tokens, the corpus yields {report['vocab_size']:,} (unigram): a larger corpus gives the full "
        "vocabulary; design with this tokenizer's size"]
    done = subprocess.run([sys.executable, "-m", "archsmith.cli", "tokenizer", "train", str(corpus), "--vocab", "500",
                           "--kind", "unigram", "--out", str(tmp_path / "tok")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "\nwarning: asked for 500 tokens, the corpus yields" in "\n" + done.stderr, done.stderr
    assert train_tokenizer([STORIES], 400, progress=False)[1]["warnings"] == []
