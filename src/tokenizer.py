"""Tokenizer artifacts the config step reads: vocab size, special-token ids, max length.

Reads a Hugging Face tokenizer directory (`tokenizer.json`, `tokenizer_config.json`,
`special_tokens_map.json`). Nothing is guessed: a missing file or a special token that the
files name but the vocabulary lacks is an error with the path and the name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archsmith.errors import ConfigError

SPECIAL = ("bos", "eos", "pad", "unk")
REQUIRED = ("eos",)  # a causal LM must be able to stop; bos/pad/unk are optional
UNSET_MAX_LENGTH = 10**9  # transformers writes int(1e30) when a tokenizer has no max length


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
    )
