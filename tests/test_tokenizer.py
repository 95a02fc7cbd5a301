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
from archsmith.tokenizer import read_tokenizer, tokenizer_files
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


VOCAB = {"bpe": 400, "unigram": 400, "wordpiece": 300, "sentencepiece": 400, "sentencepiece-bpe": 400}
FILLED = {"bpe", "wordpiece", "sentencepiece", "sentencepiece-bpe"}  # reach the size asked on the stories; unigram: ~330
BYTES = {"bpe", "sentencepiece", "sentencepiece-bpe"}  # byte-level or byte fallback: any text, no unknown token
EDGE = ["  two leading spaces\n\nand\ttabs 0123456789", "ünïcödé 日本語 🙂 — ½", "trailing space ", "x<|tool|>y <|tool|> z"]


@pytest.fixture(scope="module", params=list(VOCAB))
def trained(request, tmp_path_factory):
    from archsmith.files import write_files
    from archsmith.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp(request.param) / "tok"
    files, report = train_tokenizer([STORIES], VOCAB[request.param], kind=request.param, special=["<|tool|>"], max_length=1024,
                                    progress=False)
    write_files(out, files)
    return request.param, out, report


def reference_encoder(kind, out):
    """The library that trained the tokenizer, loaded from its own file: (encode(text) -> ids, decode(ids) -> text)."""
    if kind.startswith("sentencepiece"):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
        return sp.encode, sp.decode
    from tokenizers import Tokenizer

    fast = Tokenizer.from_file(str(out / "tokenizer.json"))
    return (lambda text: fast.encode(text, add_special_tokens=False).ids), (lambda ids: fast.decode(ids, skip_special_tokens=False))


def test_trained_tokenizer_loads_and_round_trips(trained):
    """Every kind: AutoTokenizer loads the directory, gives the training library's ids on held-out text and decodes
    back (exactly; WordPiece up to BERT's lower-casing and spacing), and the report is what we measure again."""
    import numpy as np
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    kind, out, report = trained
    encode, decode = reference_encoder(kind, out)
    auto = AutoTokenizer.from_pretrained(out)
    names = ("pad", "unk", "cls", "sep", "mask") if kind == "wordpiece" else ("pad", "bos", "eos", "unk")
    assert [getattr(auto, f"{n}_token_id") for n in names] == list(range(len(names)))
    assert auto.convert_tokens_to_ids("<|tool|>") == len(names) and auto.model_max_length == 1024
    assert auto("call <|tool|> now", add_special_tokens=False).input_ids.count(len(names)) == 1  # one token, never split
    held = CORPUS_DOCS[19::20]  # every 20th document was held out of training
    normalizer = Tokenizer.from_file(str(out / "tokenizer.json")).normalizer
    for doc in held + (EDGE if kind in BYTES else []):  # the others have no byte fallback: <unk> for unseen characters
        ids = auto(doc, add_special_tokens=False).input_ids
        assert ids == encode(doc), (kind, doc)
        if kind == "wordpiece":  # lower-cased, accents stripped, punctuation spaced: the characters survive, case aside
            assert "".join(auto.decode(ids).split()) == "".join(normalizer.normalize_str(doc).split()) and 1 not in ids
            assert auto(auto.decode(ids), add_special_tokens=False).input_ids == ids
        else:
            assert auto.decode(ids) == decode(ids) == doc, (kind, doc)
    vocab = len(auto)
    assert report["vocab_size"] == vocab and (vocab == VOCAB[kind] if kind in FILLED else vocab < VOCAB[kind])
    assert (f"asked for {VOCAB[kind]} tokens, the corpus yields {vocab}" in report["warnings"][0]) == (kind not in FILLED)
    lengths = [len(encode(d)) for d in held]  # the report, measured again
    assert report["kind"] == kind and report["measured_on"] == "held-out documents" and report["held_out"]["documents"] == len(held)
    assert report["held_out"]["characters_per_token"] == round(sum(map(len, held)) / sum(lengths), 4) > 1
    assert report["held_out"]["unknown_tokens"] == sum(encode(d).count(auto.unk_token_id) for d in held) == 0
    assert report["held_out"]["exact_round_trips"] == (0.0 if kind == "wordpiece" else 1.0)  # BERT lower-cases
    assert report["document_tokens"]["p90"] == float(np.percentile(lengths, 90)) and report["document_tokens"]["max"] == max(lengths)
    if kind == "wordpiece":  # an encoder's tokenizer: no eos, so the causal-LM design step refuses it by name
        with pytest.raises(ConfigError, match="a causal LM needs one"):
            read_tokenizer(out)
    else:
        info = read_tokenizer(out)
        assert info.vocab_size == vocab and info.eos_token_id == 2 and info.document_tokens == report["document_tokens"]


@pytest.mark.parametrize("trained", ["wordpiece"], indirect=True)
def test_wordpiece_is_bert_style(trained):
    """[CLS] A [SEP] B [SEP] with token types 0 / 1, ## continuations, and a vocab.txt that loads the same tokenizer alone."""
    from transformers import AutoTokenizer

    kind, out, _ = trained
    auto = AutoTokenizer.from_pretrained(out)
    pair = auto("The dog ran.", "It was happy.")
    cls, sep = auto.cls_token_id, auto.sep_token_id
    first = [cls, *auto("The dog ran.", add_special_tokens=False).input_ids, sep]
    assert pair.input_ids == first + auto("It was happy.", add_special_tokens=False).input_ids + [sep]
    assert pair.token_type_ids == [0] * len(first) + [1] * (len(pair.input_ids) - len(first))
    assert auto.decode(pair.input_ids, skip_special_tokens=True) == "the dog ran. it was happy."
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab == [auto.convert_ids_to_tokens(i) for i in range(len(auto))] and any(t.startswith("##") for t in vocab)
    assert "vocab.txt" in tokenizer_files(out)  # the design and train steps copy it beside the model
    alone = out.parent / "vocab_only"
    alone.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (alone / name).write_bytes((out / name).read_bytes())
    bert = AutoTokenizer.from_pretrained(alone)  # as an old BERT directory: built from vocab.txt and do_lower_case
    assert all(bert(d).input_ids == auto(d).input_ids for d in CORPUS_DOCS[19::20])


@pytest.mark.parametrize("trained", ["sentencepiece", "sentencepiece-bpe"], indirect=True)
def test_sentencepiece_is_a_real_model(trained):
    """tokenizer.model is SentencePiece's own (its model type, byte fallback: no character is unknown), and the
    tokenizer.json beside it gives its ids on text the corpus never had."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from transformers import AutoTokenizer

    kind, out, report = trained
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((out / "tokenizer.model").read_bytes())
    assert proto.trainer_spec.model_type == (proto.trainer_spec.BPE if kind == "sentencepiece-bpe" else proto.trainer_spec.UNIGRAM)
    assert proto.trainer_spec.byte_fallback and len(proto.pieces) == report["vocab_size"]
    sp, auto = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")), AutoTokenizer.from_pretrained(out)
    text = "Ærøskøbing: 42 °C — Ω ∑ 🙂"  # none of these characters is in the stories
    ids = sp.encode(text)
    assert sp.unk_id() not in ids and any(sp.id_to_piece(i).startswith("<0x") for i in ids)  # bytes, not <unk>
    assert auto(text, add_special_tokens=False).input_ids == ids and auto.decode(ids) == text
    assert tokenizer_files(out)["tokenizer.model"] == (out / "tokenizer.model").read_bytes()  # design and train copy it


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

    def refused(*args, field: str) -> str:
        result = CliRunner().invoke(app, ["tokenizer", "train", *map(str, args)])
        assert result.exit_code == 2 and result.stdout == "", result.output
        assert result.stderr.strip().startswith(f"error: {field}:") and len(result.stderr.strip().splitlines()) == 1
        return result.stderr

    (tmp_path / "empty.txt").write_text("\n\n\n")
    refused(tmp_path / "empty.txt", "--vocab", 300, "--out", tmp_path / "a", field="corpus")
    refused(STORIES, "--vocab", 100, "--out", tmp_path / "b", field="vocab")
    message = refused(STORIES, "--vocab", 300, "--kind", "bert", "--out", tmp_path / "c", field="kind")
    assert "bpe, unigram, wordpiece, sentencepiece, sentencepiece-bpe; got 'bert'" in message
    refused(STORIES, "--vocab", 300, "--special", "<s>", "--out", tmp_path / "d", field="special")
    refused(STORIES, "--vocab", 300, "--kind", "sentencepiece", "--special", "<tool call>", "--out", tmp_path / "d", field="special")
    refused(tmp_path / "missing", "--vocab", 300, "--out", tmp_path / "e", field="corpus")
    (tmp_path / "latin1.txt").write_bytes("hello world\n\n".encode() * 30 + "café\n".encode("latin-1"))
    message = refused(tmp_path / "latin1.txt", "--vocab", 300, "--kind", "sentencepiece", "--out", tmp_path / "f", field="corpus")
    assert "latin1.txt line 61 is not UTF-8 text" in message  # the reader's error, through SentencePiece's trainer
    assert not any((tmp_path / n).exists() for n in "abcdef")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "tokenizer.json").write_text("{}")
    refused(STORIES, "--vocab", 300, "--out", tmp_path / "taken", field="out")
    assert (tmp_path / "taken" / "tokenizer.json").read_text() == "{}"


def test_size_warnings_thresholds():
    """Issue #25: a corpus under 50 MB or 1,000 characters per entry, or a held-out sample under 100 documents or
    1 MB, is warned about; a corpus and sample above every threshold is not."""
    from archsmith.tokenizer import size_warnings

    small = size_warnings("bpe", 32_000, corpus_bytes=2_000_000, corpus_chars=2_000_000, held_documents=6, held_bytes=100_000)
    assert len(small) == 2 and small[0].startswith("the corpus is 2 MB (2,000,000 characters); a 32,000-entry bpe")
    assert "at least 50 MB and 1,000 characters per entry (32,000,000)" in small[0]
    assert small[1].startswith("the report is measured on 6 documents (100 kB); at least 100 documents and 1 MB")
    assert size_warnings("bpe", 32_000, 200_000_000, 190_000_000, 2_000, 8_000_000) == []
    wide = size_warnings("unigram", 262_144, 200_000_000, 190_000_000, 2_000, 8_000_000)  # 262k entries want 262M chars
    assert len(wide) == 1 and wide[0].startswith("the corpus is 200 MB")
    few = size_warnings("bpe", 32_000, 200_000_000, 190_000_000, 99, 8_000_000)  # long documents: MBs, but few of them
    assert len(few) == 1 and few[0].startswith("the report is measured on 99 documents")


def test_a_vocabulary_smaller_than_asked_is_a_warning(tmp_path):
    """Unigram on a small corpus yields fewer pieces than asked, and the corpus is small for a tokenizer: the report
    and the CLI say so."""
    from archsmith.tokenizer import size_warnings, train_tokenizer

    corpus = tmp_path / "small.txt"
    corpus.write_text("the cat sat on the mat.\n\nthe dog sat on the log.\n\n" * 20)
    files, report = train_tokenizer([corpus], 500, kind="unigram", progress=False)
    size = size_warnings("unigram", 500, corpus.stat().st_size, report["corpus"]["characters"], 2, report["held_out"]["bytes"])
    assert report["vocab_size"] < 500 and report["warnings"] == [
        f"asked for 500 tokens, the corpus yields {report['vocab_size']:,} (unigram): a larger corpus gives the full "
        "vocabulary; design with this tokenizer's size", *size] and len(size) == 2
    done = subprocess.run([sys.executable, "-m", "archsmith.cli", "tokenizer", "train", str(corpus), "--vocab", "500",
                           "--kind", "unigram", "--out", str(tmp_path / "tok")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and all(f"\nwarning: {w}\n" in "\n" + done.stderr for w in report["warnings"]), done.stderr
    assert size[0].startswith("the corpus is 1 kB (920 characters)") and size[1].startswith("the report is measured on 2 documents")
    assert json.loads((tmp_path / "tok" / "tokenizer_report.json").read_text())["warnings"] == report["warnings"]


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_cli_trains_every_kind(tmp_path, kind):
    """`--kind wordpiece|sentencepiece` writes that kind's files; retraining over it as bpe leaves none of them behind."""
    from typer.testing import CliRunner

    from archsmith.cli import app

    out = tmp_path / "tok"
    result = CliRunner().invoke(app, ["tokenizer", "train", str(STORIES), "--vocab", "400", "--kind", kind, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    own = "vocab.txt" if kind == "wordpiece" else "tokenizer.model"
    assert report["kind"] == kind and str(out / own) in report["files"] and (out / own).is_file()
    assert report["held_out"]["characters_per_token"] > 1 and len(report["warnings"]) == 2  # the stories are small
    again = CliRunner().invoke(app, ["tokenizer", "train", str(STORIES), "--vocab", "400", "--out", str(out), "--overwrite"])
    assert again.exit_code == 0, again.output
    assert not (out / own).exists() and json.loads((out / "tokenizer_report.json").read_text())["kind"] == "bpe"


def test_mcp_tool_offers_every_kind(tmp_path):
    """The train_tokenizer tool's `kind` enum is KINDS; it trains a SentencePiece tokenizer and refuses other kinds."""
    import shutil

    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server
    from archsmith.tokenizer import KINDS

    shutil.copy(STORIES, tmp_path / "stories.txt")

    async def main():
        async with Client(build_server(tmp_path)) as client:
            tool = next(t for t in (await client.list_tools()).tools if t.name == "train_tokenizer")
            assert tuple(tool.input_schema["properties"]["kind"]["enum"]) == KINDS
            args = {"corpus": ["stories.txt"], "out_dir": "tok", "vocab": 400, "kind": "sentencepiece-bpe"}
            result = await client.call_tool("train_tokenizer", args)
            assert not result.is_error, result.content[0].text
            assert result.structured_content["kind"] == "sentencepiece-bpe" and "tok/tokenizer.model" in result.structured_content["files"]
            bad = await client.call_tool("train_tokenizer", {**args, "out_dir": "tok2", "kind": "bert"})
            assert bad.is_error and "kind" in bad.content[0].text and "sentencepiece-bpe" in bad.content[0].text

    anyio.run(main)
    assert not (tmp_path / "tok2").exists()
