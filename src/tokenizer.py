"""Tokenizer artifacts the config step reads (vocab size, special-token ids, max length), and training them.

Reads a Hugging Face tokenizer directory (`tokenizer.json`, `tokenizer_config.json`,
`special_tokens_map.json`). Nothing is guessed: a missing file or a special token that the
files name but the vocabulary lacks is an error with the path and the name.

`train_tokenizer` trains byte-level BPE or Unigram with the `tokenizers` library on a corpus
(text files, JSONL, directories: `archsmith.train.data`) and returns those files plus a report
(`tokenizer_report.json`): vocabulary size, characters and bytes per token and document lengths in
tokens, measured on held-out documents. `read_tokenizer` hands the length percentiles to the
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
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer_report.json")
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

KINDS = ("bpe", "unigram")
DEFAULT_SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}  # ids 0, 1, 2, 3 in this order
HELD_OUT_PERIOD = 20  # every 20th document (5%) is kept out of training and measured for the report
HELD_OUT_MAX_CHARS = 16 << 20  # enough for stable ratios and percentiles; later documents go to training
MIN_VOCAB, MAX_VOCAB = 64, 1 << 20  # byte-level BPE needs 256 + specials; 2**20 is beyond any published LM
MAX_SPECIAL = 1000  # user special tokens
PERCENTILES = (50, 90, 99)


def train_tokenizer(corpus: list[str | Path], vocab: int, kind: str = "bpe", special: list[str] | tuple[str, ...] = (),
                    text_field: str = "text", max_length: int | None = None, progress: bool = True) -> tuple[dict[str, str], dict[str, Any]]:
    """Train a byte-level BPE or Unigram tokenizer on `corpus`; returns (files to write, report).

    Special tokens: <pad> <s> </s> <unk> (ids 0-3), then `special` in order. Every 20th document is
    held out; the report measures characters and bytes per token and document lengths on it.
    """
    import time

    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from archsmith.progress import Progress
    from archsmith.train.data import corpus_files, documents

    if kind not in KINDS:
        raise ConfigError("kind", f"must be one of {', '.join(KINDS)}; got {kind!r}")
    extra = list(special)
    if len(extra) > MAX_SPECIAL or any(not isinstance(t, str) or not t.strip() or len(t) > 64 for t in extra):
        raise ConfigError("special", f"at most {MAX_SPECIAL} non-empty tokens of at most 64 characters each")
    specials = list(DEFAULT_SPECIAL.values()) + extra
    if len(set(specials)) != len(specials):
        raise ConfigError("special", f"duplicate special tokens in {specials}")
    low = (256 if kind == "bpe" else MIN_VOCAB) + len(specials)
    if not isinstance(vocab, int) or not low <= vocab <= MAX_VOCAB:
        raise ConfigError("vocab", f"must be in [{low}, {MAX_VOCAB}] for {kind} with {len(specials)} special tokens; got {vocab}")
    if max_length is not None and not 1 <= max_length < UNSET_MAX_LENGTH:
        raise ConfigError("max_length", f"must be in [1, {UNSET_MAX_LENGTH}); got {max_length}")
    files = corpus_files(corpus, "corpus")
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab, special_tokens=specials, unk_token=DEFAULT_SPECIAL["unk"],
                                          show_progress=False)
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
    with Progress("training tokenizer", total, unit="bytes", enabled=progress, transient=True) as bar:
        try:
            tok.train_from_iterator(training_documents(bar.advance), trainer)
        except ArchsmithError:
            raise
        except Exception as exc:  # tokenizers raises bare Exceptions, e.g. a Unigram vocabulary the corpus cannot fill
            raise ConfigError("vocab", f"{kind} training failed: {exc}") from None
    seconds = time.perf_counter() - start
    if seen["documents"] == 0:
        raise ConfigError("corpus", f"no text in {', '.join(str(p) for p in files[:3])}{', ...' if len(files) > 3 else ''} (0 documents)")
    measured_on = "held-out documents"
    if not held:  # fewer than HELD_OUT_PERIOD documents: measure on the training text, and say so
        held = list(documents(files, text_field, None, "corpus"))
        measured_on = f"the training documents (fewer than {HELD_OUT_PERIOD} documents, none held out)"
    lengths = [len(e.ids) for e in tok.encode_batch(held, add_special_tokens=False)]
    chars, nbytes, tokens = sum(map(len, held)), sum(len(d.encode("utf-8")) for d in held), sum(lengths)
    ids = {name: tok.token_to_id(text) for name, text in DEFAULT_SPECIAL.items()}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              **{f"{name}_token": text for name, text in DEFAULT_SPECIAL.items()}}
    if extra:
        config["additional_special_tokens"] = extra
    if max_length is not None:
        config["model_max_length"] = max_length
    special_map = {k: v for k, v in config.items() if k.endswith("_token") or k == "additional_special_tokens"}
    report = {
        "kind": kind,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "vocab_requested": vocab,
        "special_tokens": {**{f"{name}_token": {"text": DEFAULT_SPECIAL[name], "id": i} for name, i in ids.items()},
                           **{t: {"text": t, "id": tok.token_to_id(t)} for t in extra}},
        "corpus": {"files": len(files), "documents": seen["documents"], "bytes": total, "characters": seen["chars"]},
        "measured_on": measured_on,
        "held_out": {"documents": len(held), "characters": chars, "bytes": nbytes, "tokens": tokens,
                     "characters_per_token": round(chars / tokens, 4) if tokens else None,
                     "bytes_per_token": round(nbytes / tokens, 4) if tokens else None},
        "document_tokens": {**{f"p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES},
                            "max": int(max(lengths)), "mean": round(float(np.mean(lengths)), 2)},
        "training_seconds": round(seconds, 3),
        "training_mb_per_s": round(total / 1e6 / seconds, 3) if seconds > 0 else None,
        "warnings": [],
    }
    if report["vocab_size"] < vocab:  # a small corpus has fewer distinct pieces than asked for
        report["warnings"].append(f"asked for {vocab:,} tokens, the corpus yields {report['vocab_size']:,} ({kind}): "
                                  "a larger corpus gives the full vocabulary; design with this tokenizer's size")
    files_out = {
        "tokenizer.json": tok.to_str(pretty=True),
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2) + "\n",
        REPORT_FILE: json.dumps(report, indent=2) + "\n",
    }
    return files_out, report
