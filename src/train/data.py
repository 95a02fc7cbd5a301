"""Training data: corpus files -> a memory-mapped token file -> packed windows -> per-rank batches.

- Corpus: text files (a blank line ends a document), JSONL files (one document per line, in a
  named string field) and directories of them (searched recursively, sorted, hidden files skipped).
  Read as a stream, so corpora larger than memory work.
- Token file: every document is encoded with the run's tokenizer and followed by EOS, streamed to
  `tokens.bin` (uint16 when the vocabulary fits, else uint32; read back through `numpy.memmap`)
  with `tokens.json` beside it (counts, dtype, and a fingerprint of the corpus and tokenizer).
- Packing: the token stream is cut into windows of `seq` tokens regardless of document borders
  (EOS marks them); the last, shorter window is padded and its padding masked out of the loss, so
  no token is dropped or repeated. Every `round(1 / eval_fraction)`-th window is held out.
  With document masking a token attends only to earlier tokens of its own document, and
  positions restart at every document.
- Order and sharding: optimizer step `s` consumes samples `[s * G, (s + 1) * G)` of an endless
  stream that visits every training window once per epoch in a seeded random order (G = global
  batch). Rank `r` of `W` takes the `r`-th contiguous `G / W` of them, so ranks are disjoint, cover
  the step, and any world size sees the same global batch: a run resumes from its step alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from archsmith.errors import ArchsmithError
from archsmith.files import HeldDir
from archsmith.progress import Progress

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
MAX_DOCUMENT_CHARS = 1 << 20  # a paragraph longer than 1 Mi characters is cut at a line break (bounded memory)
ENCODE_BATCH_CHARS = 4 << 20  # characters per encode_batch call: large enough for the tokenizer's threads, small in memory
TOKENS_FILE, META_FILE = "tokens.bin", "tokens.json"
IGNORE_INDEX = -100  # the label value cross-entropy skips (padding of the last window)


# ---- corpus -------------------------------------------------------------------------------------

def corpus_files(paths: Sequence[str | Path], field: str = "data") -> list[Path]:
    """Files named or found (recursively) in `paths`; a directory contributes its text and JSONL files.

    Directories are walked through the workspace boundary without following symlinks: a symlink found inside
    one is skipped (named on stderr), never read. A file named directly is opened through the boundary."""
    from archsmith import files as fs

    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ArchsmithError(field, "give at least one corpus file or directory")
    found_files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        what = fs.kind(path, field)
        if what == "dir":
            skipped: list[str] = []
            with fs.HeldDir(path, field, create=False) as held:
                found = sorted(path / rel for rel in _walk(held, Path("."), skipped)
                               if rel.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
            for name in skipped[:5]:
                print(f"archsmith: skipped {path / name}: a symlink inside a corpus directory is never followed", file=sys.stderr)
            if not found:
                raise ArchsmithError(field, f"{path} holds no {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} files")
            found_files.extend(found)
        elif what == "file":
            found_files.append(path)
        else:
            raise ArchsmithError(field, f"no such file or directory: {path}")
    return found_files


def _walk(held, relative: Path, skipped: list[str]) -> Iterator[Path]:
    """Regular files below `relative` of a held directory, hidden names and symlinks left out (symlinks noted)."""
    for name, kind in held.listdir(relative):
        if name.startswith("."):
            continue
        if kind == "dir":
            yield from _walk(held, relative / name, skipped)
        elif kind == "file":
            yield relative / name
        elif kind == "link":
            skipped.append(str(relative / name))


def documents(files: Sequence[Path], text_field: str = "text", on_bytes: Callable[[int], None] | None = None,
              field: str = "data") -> Iterator[str]:
    """Yield the documents of `files` in order (empty ones skipped); `on_bytes(n)` reports bytes read.
    Each file is opened through the workspace boundary (archsmith.files)."""
    from archsmith.files import open_file

    for path in files:
        jsonl = path.suffix.lower() in JSONL_SUFFIXES
        with open_file(path, field) as fh:
            reader = _jsonl_documents if jsonl else _text_documents
            yield from reader(fh, path, text_field, on_bytes or (lambda n: None), field)


def _decode(raw: bytes, path: Path, line: int, field: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArchsmithError(field, f"{path} line {line} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _text_documents(fh, path: Path, text_field: str, on_bytes, field: str) -> Iterator[str]:
    lines: list[str] = []
    size = 0
    for number, raw in enumerate(fh, 1):
        on_bytes(len(raw))
        line = _decode(raw, path, number, field)
        if line.strip():
            lines.append(line)
            size += len(line)
            if size < MAX_DOCUMENT_CHARS:
                continue
        if lines:
            yield "".join(lines).strip("\n")
            lines, size = [], 0
    if lines:
        yield "".join(lines).strip("\n")


def _jsonl_documents(fh, path: Path, text_field: str, on_bytes, field: str) -> Iterator[str]:
    for number, raw in enumerate(fh, 1):
        on_bytes(len(raw))
        line = _decode(raw, path, number, field).strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ArchsmithError(field, f"{path} line {number} is not JSON: {exc.msg}") from None
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ArchsmithError("field", f"{path} line {number} has no string field {text_field!r} (pass --field NAME)")
        if text.strip():
            yield text


def fingerprint(files: Sequence[Path], extra: dict[str, Any]) -> str:
    """Changes when a corpus file (path, size, modification time) or anything in `extra` changes."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
    for path in files:
        st = path.stat()
        h.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ---- token file ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenFile:
    """A token stream on disk: `tokens.bin` (little-endian `dtype`) and its `tokens.json`."""

    directory: Path
    tokens: int
    documents: int
    dtype: str
    eos_id: int
    fingerprint: str
    tokens_map: np.ndarray | None = field(default=None, compare=False, repr=False)

    def array(self) -> np.ndarray:
        """All tokens as a read-only memory map, shape (tokens,)."""
        if self.tokens_map is not None:
            return self.tokens_map
        with HeldDir(self.directory, "data", create=False) as held:
            return _map(held, self.dtype, self.tokens)

    @classmethod
    def read(cls, directory: str | Path | HeldDir) -> "TokenFile | None":
        """The token file in `directory` (a held directory is read without following symlinks); None if absent."""
        if not isinstance(directory, HeldDir):
            if not Path(directory).is_dir():
                return None
            with HeldDir(directory, "data", create=False) as held:
                return cls.read(held)
        if directory.exists(META_FILE) != "file" or directory.exists(TOKENS_FILE) != "file":
            return None
        with directory.open(META_FILE, "r", encoding="utf-8") as fh:
            data = json.load(fh)
        return cls(directory.path, data["tokens"], data["documents"], data["dtype"], data["eos_id"], data["fingerprint"],
                   _map(directory, data["dtype"], data["tokens"]))


def _map(held: HeldDir, dtype: str, tokens: int) -> np.ndarray:
    with held.open(TOKENS_FILE, "rb") as fh:  # the map outlives the file object
        return np.memmap(fh, dtype=np.dtype(dtype), mode="r", shape=(tokens,))


def tokenize(files: Sequence[Path], tokenizer_json: str | Path, out: str | Path | HeldDir, eos_id: int, text_field: str = "text",
             progress: bool = True, reuse_only: bool = False) -> TokenFile:
    """Encode every document of `files` (each followed by `eos_id`) into `out`/tokens.bin, streaming.

    Reuses an existing token file with the same fingerprint (`reuse_only`: refuses to make another, as a
    resumed run must see the data it started with). Writes under temporary names and renames
    `tokens.json` last, so a killed run never leaves a token file that looks complete. `out` may be a held
    directory (a training run's RUN/data): then nothing below it is reached through a symlink.
    """
    if not isinstance(out, HeldDir):
        with HeldDir(out, "data") as held:
            return tokenize(files, tokenizer_json, held, eos_id, text_field, progress, reuse_only)
    from tokenizers import Tokenizer

    from archsmith.files import read_bytes

    raw = read_bytes(tokenizer_json, "tokenizer")
    tok = Tokenizer.from_str(raw.decode("utf-8"))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = "<u2" if vocab <= 1 << 16 else "<u4"
    digest = hashlib.sha256(raw).hexdigest()
    stamp = fingerprint(files, {"tokenizer": digest, "eos_id": eos_id, "field": text_field, "dtype": dtype})
    existing = TokenFile.read(out)
    if existing is not None and existing.fingerprint == stamp:
        return existing
    if reuse_only:
        raise ArchsmithError("data", f"the corpus or tokenizer changed since the run in {out.path.parent} started "
                                     "(files, sizes or modification times differ); resume with the same data")
    tmp = f".{TOKENS_FILE}.tmp"
    out.remove(tmp)
    total_bytes = sum(p.stat().st_size for p in files)
    count = docs = 0
    bar = Progress("tokenizing", total_bytes, unit="bytes", enabled=progress, transient=True)
    with bar, out.open(tmp, "ab") as sink:
        batch: list[str] = []
        chars = 0

        def flush() -> int:
            encoded = tok.encode_batch(batch, add_special_tokens=False)
            ids = np.fromiter((i for e in encoded for i in (*e.ids, eos_id)), dtype=np.dtype(dtype),
                              count=sum(len(e.ids) + 1 for e in encoded))
            sink.write(ids.tobytes())
            return len(ids)

        for doc in documents(files, text_field, bar.advance):
            batch.append(doc)
            chars += len(doc)
            docs += 1
            if chars >= ENCODE_BATCH_CHARS:
                count += flush()
                batch, chars = [], 0
        if batch:
            count += flush()
        sink.flush()
        os.fsync(sink.fileno())
    if docs == 0:
        out.remove(tmp)
        raise ArchsmithError("data", f"the corpus ({', '.join(str(p) for p in files[:3])}{', ...' if len(files) > 3 else ''}) "
                                     "holds no text (0 documents)")
    out.rename(tmp, TOKENS_FILE)
    meta = {"tokens": count, "documents": docs, "dtype": dtype, "eos_id": eos_id, "fingerprint": stamp,
            "files": [str(p) for p in files], "tokenizer_sha256": digest, "field": text_field}
    out.write(META_FILE, json.dumps(meta, indent=2) + "\n")
    return TokenFile(out.path, count, docs, dtype, eos_id, stamp, _map(out, dtype, count))


# ---- packing, split, order ----------------------------------------------------------------------

class Windows:
    """Sequence of packed windows: item i is (seq,) int64 tokens of window `indices[i]`, -1 marking padding."""

    def __init__(self, tokens: np.ndarray, seq: int, indices: np.ndarray):
        self.tokens, self.seq, self.indices = tokens, seq, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.indices[i]) * self.seq
        chunk = np.asarray(self.tokens[start:start + self.seq], dtype=np.int64)
        if len(chunk) < self.seq:
            chunk = np.concatenate([chunk, np.full(self.seq - len(chunk), -1, dtype=np.int64)])
        return chunk


def split_windows(tokens: np.ndarray, seq: int, eval_fraction: float) -> tuple[Windows, Windows | None]:
    """(train, held-out) windows of `seq` tokens; every round(1 / eval_fraction)-th window is held out."""
    n = -(-len(tokens) // seq)
    if eval_fraction <= 0:
        return Windows(tokens, seq, np.arange(n)), None
    period = max(2, round(1 / eval_fraction))
    if n < period:
        raise ArchsmithError("data", f"{len(tokens):,} tokens make {n} window(s) of seq {seq}; holding out every "
                                     f"{period}th needs at least {period}: add text, lower --seq or set --eval-fraction 0")
    held = np.arange(n) % period == period - 1
    return Windows(tokens, seq, np.flatnonzero(~held)), Windows(tokens, seq, np.flatnonzero(held))


class Order:
    """The seeded endless sample stream: position p is sample perm_e[p mod n] of epoch e = p // n."""

    def __init__(self, size: int, seed: int):
        if size <= 0:
            raise ArchsmithError("data", "no training samples")
        self.size, self.seed = size, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return self._perm[1]

    def take(self, start: int, count: int) -> list[int]:
        """Sample indices at stream positions [start, start + count)."""
        return [int(self._permutation(p // self.size)[p % self.size]) for p in range(start, start + count)]


def rank_slice(step: int, global_batch: int, rank: int, world: int) -> tuple[int, int]:
    """(first stream position, count) of rank `rank`'s share of optimizer step `step` (0-based)."""
    share = global_batch // world
    return step * global_batch + rank * share, share


# ---- batches for a causal LM --------------------------------------------------------------------

def lm_batch(windows: list[np.ndarray], pad_id: int, eos_id: int, document_mask: bool = False) -> dict[str, Any]:
    """Windows (each (S,), -1 = padding) -> input_ids and labels (B, S); with document_mask also
    position_ids (B, S) restarting after every EOS and attention_mask (B, 1, S, S), True where query i
    may see key j (same document, j <= i)."""
    import torch

    x = torch.from_numpy(np.stack(windows))
    pad = x < 0
    input_ids = x.masked_fill(pad, pad_id)
    batch = {"input_ids": input_ids, "labels": x.masked_fill(pad, IGNORE_INDEX)}
    if document_mask:
        S = x.shape[1]
        ends = (input_ids == eos_id).long()
        doc = ends.cumsum(1) - ends  # documents started before each token: an EOS belongs to the document it ends
        same = doc[:, :, None] == doc[:, None, :]
        batch["attention_mask"] = (same & torch.ones(S, S, dtype=torch.bool).tril())[:, None]
        idx = torch.arange(S).expand_as(doc)
        starts = torch.where(torch.cat([torch.ones_like(doc[:, :1], dtype=torch.bool), doc[:, 1:] != doc[:, :-1]], 1), idx, 0)
        batch["position_ids"] = idx - starts.cummax(1).values
    return batch
