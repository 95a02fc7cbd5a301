"""Tokenizer artifacts the config step reads (vocab size, special-token ids, max length), and training them.

Reads a Hugging Face tokenizer directory (`tokenizer.json`, `tokenizer_config.json`,
`special_tokens_map.json`). Nothing is guessed: a missing file or a special token that the
files name but the vocabulary lacks is an error with the path and the name.

`train_tokenizer` trains byte-level BPE, Unigram or BERT-style WordPiece with the `tokenizers` library, or
SentencePiece (unigram or BPE, a `tokenizer.model` plus its `tokenizer.json`) with `sentencepiece`, on a corpus
(text files, JSONL, directories: `archsmith.train.data`) and returns those files plus a report
(`tokenizer_report.json`): vocabulary size, characters and bytes per token, unknown tokens and document
lengths in tokens, measured on held-out documents the same way for every kind, and warnings for a corpus or
held-out sample too small. `read_tokenizer` hands the length percentiles to the
design's context check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archsmith.errors import ArchsmithError, ConfigError

SPECIAL = ("bos", "eos", "pad", "unk")
REQUIRED = ("eos",)  # a causal LM must be able to stop; bos/pad/unk are optional
UNSET_MAX_LENGTH = 10**9  # transformers writes int(1e30) when a tokenizer has no max length
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer_report.json",
         "vocab.txt", "tokenizer.model")  # WordPiece's vocabulary as BERT directories carry it; SentencePiece's model
REPORT_FILE = "tokenizer_report.json"


@dataclass(frozen=True)
class TokenizerInfo:
    path: str
    vocab_size: int  # including added tokens
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    unk_token_id: int | None
    special_tokens: dict[str, str | None]
    model_max_length: int | None  # None when the tokenizer sets none
    document_tokens: dict[str, float] | None = None  # length percentiles from tokenizer_report.json, if trained here

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _read_json(path: Path) -> dict[str, Any]:
    from archsmith.files import read_text

    try:
        data = json.loads(read_text(path, "tokenizer"))
    except json.JSONDecodeError as exc:
        raise ConfigError("tokenizer", f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise ConfigError("tokenizer", f"{path} must hold a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as {"content": "<s>", ...}
        return value.get("content")
    return value if isinstance(value, str) else None


def read_tokenizer(directory: str | Path) -> TokenizerInfo:
    """Read the tokenizer in `directory` (through the workspace boundary). Raises ConfigError naming the missing file or token."""
    from archsmith.files import kind as file_kind, read_text

    directory = Path(directory)
    is_file = lambda name: file_kind(directory / name, "tokenizer") == "file"  # noqa: E731
    if file_kind(directory, "tokenizer") != "dir":
        raise ConfigError("tokenizer", f"not a directory: {directory}")
    tok_file = directory / "tokenizer.json"
    if not is_file("tokenizer.json"):
        raise ConfigError("tokenizer", f"{tok_file} is missing (train one with `archsmith tokenizer train` or save a fast tokenizer)")
    from tokenizers import Tokenizer  # lazy: only this command needs it

    text = read_text(tok_file, "tokenizer")
    try:
        tok = Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises a bare Exception on bad files
        raise ConfigError("tokenizer", f"{tok_file} cannot be loaded: {exc}") from None
    config: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # tokenizer_config wins
        if is_file(name):
            config.update({k: v for k, v in _read_json(directory / name).items() if v is not None})
    if not any(is_file(n) for n in ("special_tokens_map.json", "tokenizer_config.json")):
        raise ConfigError("tokenizer", f"{directory} has neither tokenizer_config.json nor special_tokens_map.json, so its special tokens are unknown")
    tokens: dict[str, str | None] = {}
    ids: dict[str, int | None] = {}
    for kind in SPECIAL:
        text = _token_text(config.get(f"{kind}_token"))
        tokens[kind] = text
        if text is None:
            if kind in REQUIRED:
                raise ConfigError(f"{kind}_token", f"not set in {directory}/tokenizer_config.json or special_tokens_map.json; a causal LM needs one")
            ids[kind] = None
            continue
        token_id = tok.token_to_id(text)
        if token_id is None:
            raise ConfigError(f"{kind}_token", f"{text!r} named in {directory} is not in the vocabulary of {tok_file}")
        ids[kind] = token_id
    max_len = config.get("model_max_length")
    if not isinstance(max_len, (int, float)) or max_len >= UNSET_MAX_LENGTH:
        max_len = None
    return TokenizerInfo(
        path=str(directory),
        vocab_size=max(tok.get_vocab(with_added_tokens=True).values()) + 1,  # ids may have holes
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        unk_token_id=ids["unk"],
        special_tokens=tokens,
        model_max_length=int(max_len) if max_len is not None else None,
        document_tokens=_read_json(directory / REPORT_FILE).get("document_tokens") if (directory / REPORT_FILE).is_file() else None,
    )


def tokenizer_files(directory: str | Path) -> dict[str, bytes]:
    """The tokenizer files present in `directory` (name -> content), to copy beside a model's config.json."""
    return {name: (Path(directory) / name).read_bytes() for name in FILES if (Path(directory) / name).is_file()}


# ---- training ---------------------------------------------------------------------------------

KINDS = ("bpe", "unigram", "wordpiece", "sentencepiece", "sentencepiece-bpe")
DEFAULT_SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}  # ids 0, 1, 2, 3 in this order
BERT_SPECIAL = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}  # BERT's names, ids 0-4
HELD_OUT_PERIOD = 20  # every 20th document (5%) is kept out of training and measured for the report
HELD_OUT_MAX_CHARS = 16 << 20  # enough for stable ratios and percentiles; later documents go to training
MIN_VOCAB, MAX_VOCAB = 64, 1 << 20  # byte-level BPE needs 256 + specials; 2**20 is beyond any published LM
MAX_SPECIAL = 1000  # user special tokens
PERCENTILES = (50, 90, 99)
# SentencePiece reads its sentences into memory: lines are cut to this length, and at most this many are sampled
SPM_MAX_LINE_CHARS = 8192  # its default max_sentence_length (4192 bytes) would silently skip longer lines
SPM_MAX_SENTENCES = 10_000_000  # ~1 GB of lines in memory; a larger corpus is sampled (input_sentence_size)
# Size warnings (issue #25): below these the tokenizer and its report describe this sample more than the language.
MIN_CORPUS_BYTES = 50_000_000  # ~50 MB: below it the last merges / pieces rest on a handful of occurrences each
MIN_CORPUS_CHARS_PER_ENTRY = 1000  # ~250 tokens of text per vocabulary entry, so rare entries are estimated, not memorised
MIN_HELD_OUT_DOCUMENTS = 100  # with fewer, the p99 document length is the maximum of a handful of documents
MIN_HELD_OUT_BYTES = 1_000_000  # ~1 MB: characters per token from less moves by percents between samples


def _decimal_bytes(n: float) -> str:
    """940 B, 21.3 kB, 2 MB, 1.5 GB: decimal units, as the thresholds are stated (units.human_bytes is binary)."""
    for div, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= div:
            return f"{n / div:.3g} {suffix}"
    return f"{n:.0f} B"


def size_warnings(kind: str, vocab: int, corpus_bytes: int, corpus_chars: int, held_documents: int, held_bytes: int) -> list[str]:
    """Warnings for a corpus too small for a `vocab`-entry tokenizer or a held-out sample too small to measure it."""
    warnings = []
    want_chars = MIN_CORPUS_CHARS_PER_ENTRY * vocab
    if corpus_bytes < MIN_CORPUS_BYTES or corpus_chars < want_chars:
        warnings.append(f"the corpus is {_decimal_bytes(corpus_bytes)} ({corpus_chars:,} characters); a {vocab:,}-entry {kind} "
                        f"tokenizer wants at least {_decimal_bytes(MIN_CORPUS_BYTES)} and {MIN_CORPUS_CHARS_PER_ENTRY:,} characters "
                        f"per entry ({want_chars:,}): the rarer merges and pieces fit this sample, not the language")
    if held_documents < MIN_HELD_OUT_DOCUMENTS or held_bytes < MIN_HELD_OUT_BYTES:
        warnings.append(f"the report is measured on {held_documents:,} documents ({_decimal_bytes(held_bytes)}); at least "
                        f"{MIN_HELD_OUT_DOCUMENTS} documents and {_decimal_bytes(MIN_HELD_OUT_BYTES)} make characters per token "
                        f"and the p99 length stable (a larger corpus holds out more: every {HELD_OUT_PERIOD}th document)")
    return warnings


def train_tokenizer(corpus: list[str | Path], vocab: int, kind: str = "bpe", special: list[str] | tuple[str, ...] = (),
                    text_field: str = "text", max_length: int | None = None, progress: bool = True) -> tuple[dict[str, str | bytes], dict[str, Any]]:
    """Train a tokenizer of `kind` (KINDS) on `corpus`; returns (files to write, report).

    Special tokens: <pad> <s> </s> <unk> (ids 0-3; wordpiece: [PAD] [UNK] [CLS] [SEP] [MASK], ids 0-4), then
    `special` in order. Every 20th document is held out; the report measures characters and bytes per token,
    the unknown-token rate, exact round trips and document lengths on it, the same way for every kind.
    """
    import time

    from archsmith.progress import Progress
    from archsmith.train.data import corpus_files, documents

    if kind not in KINDS:
        raise ConfigError("kind", f"must be one of {', '.join(KINDS)}; got {kind!r}")
    extra = list(special)
    if len(extra) > MAX_SPECIAL or any(not isinstance(t, str) or not t.strip() or len(t) > 64 for t in extra):
        raise ConfigError("special", f"at most {MAX_SPECIAL} non-empty tokens of at most 64 characters each")
    if kind.startswith("sentencepiece") and any(any(c.isspace() for c in t) for t in extra):
        raise ConfigError("special", f"{kind} special tokens may not contain whitespace (SentencePiece matches text with "
                                     f"spaces escaped, so such a piece would never be emitted); got {extra}")
    base = BERT_SPECIAL if kind == "wordpiece" else DEFAULT_SPECIAL
    specials = list(base.values()) + extra
    if len(set(specials)) != len(specials):
        raise ConfigError("special", f"duplicate special tokens in {specials}")
    low = (256 if kind in ("bpe", "sentencepiece", "sentencepiece-bpe") else MIN_VOCAB) + len(specials)  # 256 bytes
    if not isinstance(vocab, int) or not low <= vocab <= MAX_VOCAB:
        raise ConfigError("vocab", f"must be in [{low}, {MAX_VOCAB}] for {kind} with {len(specials)} special tokens; got {vocab}")
    if max_length is not None and not 1 <= max_length < UNSET_MAX_LENGTH:
        raise ConfigError("max_length", f"must be in [1, {UNSET_MAX_LENGTH}); got {max_length}")
    files = corpus_files(corpus, "corpus")
    held: list[str] = []
    seen = {"documents": 0, "chars": 0, "held_chars": 0}

    def training_documents(advance):
        for i, doc in enumerate(documents(files, text_field, advance, "corpus")):
            seen["documents"] += 1
            seen["chars"] += len(doc)
            if i % HELD_OUT_PERIOD == HELD_OUT_PERIOD - 1 and seen["held_chars"] < HELD_OUT_MAX_CHARS:
                held.append(doc)
                seen["held_chars"] += len(doc)
            else:
                yield doc

    total = sum(p.stat().st_size for p in files)
    start = time.perf_counter()
    train = _train_sentencepiece if kind.startswith("sentencepiece") else _train_hf
    with Progress("training tokenizer", total, unit="bytes", enabled=progress, transient=True) as bar:
        try:
            model = train(kind, vocab, specials, training_documents(bar.advance))
        except ArchsmithError:
            raise
        except Exception as exc:  # tokenizers and sentencepiece raise bare errors, e.g. a vocabulary the corpus cannot fill
            model = None
            if seen["documents"]:
                raise ConfigError("vocab", f"{kind} training failed: {exc}") from None
    seconds = time.perf_counter() - start
    if seen["documents"] == 0:  # (training raised on no text: model is None)
        raise ConfigError("corpus", f"no text in {', '.join(str(p) for p in files[:3])}{', ...' if len(files) > 3 else ''} (0 documents)")
    measured_on = "held-out documents"
    if not held:  # fewer than HELD_OUT_PERIOD documents: measure on the training text, and say so
        held = list(documents(files, text_field, None, "corpus"))
        measured_on = f"the training documents (fewer than {HELD_OUT_PERIOD} documents, none held out)"
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                              **{f"{name}_token": text for name, text in base.items()}}
    if kind == "wordpiece":  # as bert-base-uncased's files say it (BertTokenizer loads tokenizer.json, or vocab.txt alone)
        config.update(tokenizer_class="BertTokenizer", do_lower_case=True, clean_up_tokenization_spaces=True)
    if extra and not kind.startswith("sentencepiece"):  # SentencePiece's are user-defined pieces: see _train_sentencepiece
        config["additional_special_tokens"] = extra
    if max_length is not None:
        config["model_max_length"] = max_length
    special_map = {k: v for k, v in config.items() if k.endswith("_token") or k == "additional_special_tokens"}
    report = {
        "kind": kind,
        "vocab_size": model["vocab_size"],
        "vocab_requested": vocab,
        "special_tokens": {**{f"{name}_token": {"text": text, "id": model["token_to_id"](text)} for name, text in base.items()},
                           **{t: {"text": t, "id": model["token_to_id"](t)} for t in extra}},
        "corpus": {"files": len(files), "documents": seen["documents"], "bytes": total, "characters": seen["chars"]},
        "measured_on": measured_on,
        **held_out_report(held, model["encode"], model["decode"], model["token_to_id"](base["unk"])),
        "training_seconds": round(seconds, 3),
        "training_mb_per_s": round(total / 1e6 / seconds, 3) if seconds > 0 else None,
        "warnings": [],
    }
    if report["vocab_size"] < vocab:  # a small corpus has fewer distinct pieces than asked for
        report["warnings"].append(f"asked for {vocab:,} tokens, the corpus yields {report['vocab_size']:,} ({kind}): "
                                  "a larger corpus gives the full vocabulary; design with this tokenizer's size")
    report["warnings"] += size_warnings(kind, vocab, total, seen["chars"], report["held_out"]["documents"], report["held_out"]["bytes"])
    files_out: dict[str, str | bytes] = {
        "tokenizer.json": model["json"](),  # SentencePiece's is converted here, outside the training time
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2) + "\n",
        **model["files"],
        REPORT_FILE: json.dumps(report, indent=2) + "\n",
    }
    return files_out, report


def held_out_report(docs: list[str], encode, decode, unk_id: int | None) -> dict[str, Any]:
    """The report's measurements of a tokenizer on `docs`, the same for every kind.

    `encode(docs) -> list of id lists` (no special tokens added), `decode(ids) -> str`. Returns `held_out`
    (documents, characters, bytes, tokens, characters and bytes per token, unknown tokens and their rate,
    the fraction of documents that decode back exactly) and `document_tokens` (length percentiles, max, mean).
    """
    import numpy as np

    encoded = encode(docs)
    lengths = [len(ids) for ids in encoded]
    chars, nbytes, tokens = sum(map(len, docs)), sum(len(d.encode("utf-8")) for d in docs), sum(lengths)
    unknown = sum(ids.count(unk_id) for ids in encoded) if unk_id is not None else 0
    exact = sum(decode(ids) == doc for ids, doc in zip(encoded, docs))
    return {
        "held_out": {"documents": len(docs), "characters": chars, "bytes": nbytes, "tokens": tokens,
                     "characters_per_token": round(chars / tokens, 4) if tokens else None,
                     "bytes_per_token": round(nbytes / tokens, 4) if tokens else None,
                     "unknown_tokens": unknown, "unknown_rate": round(unknown / tokens, 6) if tokens else None,
                     "exact_round_trips": round(exact / len(docs), 4) if docs else None},
        "document_tokens": {**{f"p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES},
                            "max": int(max(lengths)), "mean": round(float(np.mean(lengths)), 2)},
    }


def _train_hf(kind: str, vocab: int, specials: list[str], docs) -> dict[str, Any]:
    """bpe, unigram or wordpiece with the `tokenizers` library. Returns vocab_size, token_to_id(text) -> id | None,
    encode(texts) -> id lists, decode(ids) -> text, json() -> tokenizer.json, files (the kind's other files)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab, special_tokens=specials, unk_token=DEFAULT_SPECIAL["unk"],
                                          show_progress=False)
    else:  # BERT: lower-cased, accents stripped, Chinese characters split, punctuation split off, ## continuations
        tok = Tokenizer(models.WordPiece(unk_token=BERT_SPECIAL["unk"], continuing_subword_prefix="##"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=vocab, special_tokens=specials, continuing_subword_prefix="##",
                                            show_progress=False)
    tok.train_from_iterator(docs, trainer)
    files: dict[str, str] = {}
    if kind == "wordpiece":
        cls, sep = BERT_SPECIAL["cls"], BERT_SPECIAL["sep"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
        by_id = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
        files["vocab.txt"] = "".join(token + "\n" for token, _ in by_id)
    return {"vocab_size": tok.get_vocab_size(with_added_tokens=True), "token_to_id": tok.token_to_id,
            "encode": lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)],
            "decode": lambda ids: tok.decode(ids, skip_special_tokens=False),
            "json": lambda: tok.to_str(pretty=True), "files": files}


def _train_sentencepiece(kind: str, vocab: int, specials: list[str], docs) -> dict[str, Any]:
    """SentencePiece (unigram, or BPE for "sentencepiece-bpe") with the `sentencepiece` library: `tokenizer.model`,
    and `tokenizer.json` converted by transformers' own converter, so AutoTokenizer needs no sentencepiece and
    gives SentencePiece's ids. Set up as Llama 2's: lossless (identity normalisation, spaces kept, byte fallback),
    digits split, a soft vocabulary limit (a small corpus yields fewer pieces).
    <pad> <s> </s> <unk> are ids 0-3; extra special tokens are user-defined pieces, which SentencePiece emits
    whole wherever they occur in text (transformers' AddedTokens would restart the dummy prefix after them and
    disagree with SentencePiece, so the config does not list them as special)."""
    import io
    import os

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    failed: list[BaseException] = []  # SentencePiece turns an error of the reader into its own RuntimeError

    def lines():  # SentencePiece trains on lines; the report encodes whole documents, newlines included
        try:
            for doc in docs:
                for line in doc.split("\n"):
                    for cut in range(0, len(line), SPM_MAX_LINE_CHARS):
                        if line[cut:cut + SPM_MAX_LINE_CHARS].strip():
                            yield line[cut:cut + SPM_MAX_LINE_CHARS]
        except BaseException as exc:
            failed.append(exc)
            raise

    names = dict(zip(("pad", "bos", "eos", "unk"), specials))
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(), model_writer=model, model_type="bpe" if kind == "sentencepiece-bpe" else "unigram",
            vocab_size=vocab, hard_vocab_limit=False, byte_fallback=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
            pad_id=0, bos_id=1, eos_id=2, unk_id=3, **{f"{k}_piece": v for k, v in names.items()},
            user_defined_symbols=specials[4:], max_sentence_length=4 * SPM_MAX_LINE_CHARS,
            input_sentence_size=SPM_MAX_SENTENCES, shuffle_input_sentence=True,
            num_threads=min(16, os.cpu_count() or 1), minloglevel=2)
    except Exception:
        if failed:
            raise failed[0] from None
        raise
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())

    def tokenizer_json() -> str:  # transformers' converter, which reproduces SentencePiece's normalizer and dummy prefix
        from transformers.convert_slow_tokenizer import SpmConverter

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(model.getvalue())
        pieces = ({p.piece: i for i, p in enumerate(proto.pieces)} if kind == "sentencepiece-bpe"
                  else [(p.piece, p.score) for p in proto.pieces])
        return SpmConverter.build_tokenizer_from_spm_proto(proto, pieces).to_str(pretty=True)  # legacy=True

    def token_to_id(piece: str) -> int | None:  # SentencePiece answers unk's id for a piece it lacks
        i = sp.piece_to_id(piece)
        return i if i != sp.unk_id() or piece == names["unk"] else None

    return {"vocab_size": sp.get_piece_size(), "token_to_id": token_to_id, "encode": sp.encode, "decode": sp.decode,
            "json": tokenizer_json, "files": {"tokenizer.model": model.getvalue()}}
