"""Corpus reading, the token file, packing and per-rank order: nothing dropped, nothing repeated, ranks disjoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from archsmith.errors import ArchsmithError
from archsmith.train.data import Order, corpus_files, documents, lm_batch, rank_slice, split_windows, tokenize
from conftest import STORIES, TINY_LM


def test_corpus_kinds_and_the_token_file(tmp_path, tiny_lm):
    from tokenizers import Tokenizer

    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("First document,\nstill the first.\n\n\nSecond document.\n")
    (corpus / "sub" / "b.jsonl").write_text(json.dumps({"body": "Third, from JSONL."}) + "\n\n" + json.dumps({"body": "Fourth."}) + "\n")
    (corpus / ".hidden.txt").write_text("never read\n")
    (corpus / "notes.csv").write_text("not a corpus file\n")
    files = corpus_files([corpus])
    assert [p.name for p in files] == ["a.txt", "b.jsonl"]
    docs = list(documents(files, "body"))
    assert docs == ["First document,\nstill the first.", "Second document.", "Third, from JSONL.", "Fourth."]
    tok = Tokenizer.from_file(str(tiny_lm["tokenizer"] / "tokenizer.json"))
    made = tokenize(files, tiny_lm["tokenizer"] / "tokenizer.json", tmp_path / "data", eos_id=2, text_field="body", progress=False)
    expected = [i for d in docs for i in (*tok.encode(d, add_special_tokens=False).ids, 2)]
    assert made.documents == 4 and made.tokens == len(expected) and made.dtype == "<u2"
    assert made.array().tolist() == expected  # every document, in order, each followed by EOS
    assert tokenize(files, tiny_lm["tokenizer"] / "tokenizer.json", tmp_path / "data", 2, "body", progress=False) == made  # reused


def test_bad_corpora(tmp_path, tiny_lm):
    tok = tiny_lm["tokenizer"] / "tokenizer.json"
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(ArchsmithError, match="0 documents"):
        tokenize([tmp_path / "blank.txt"], tok, tmp_path / "out", 2, progress=False)
    assert not (tmp_path / "out" / "tokens.bin").exists()
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"content": "no text field"}\n')
    with pytest.raises(ArchsmithError) as info:
        list(documents([tmp_path / "bad.jsonl"]))
    assert info.value.field == "field" and "line 2" in str(info.value)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ArchsmithError, match="not UTF-8"):
        list(documents([tmp_path / "latin1.txt"]))
    with pytest.raises(ArchsmithError, match="no such file"):
        corpus_files([tmp_path / "missing"])


@settings(max_examples=60, deadline=None)
@given(n_tokens=st.integers(1, 3000), seq=st.integers(2, 300), fraction=st.sampled_from([0.0, 0.05, 0.1, 0.5]))
def test_packing_neither_drops_nor_repeats(n_tokens, seq, fraction):
    tokens = np.random.default_rng(n_tokens).integers(0, 60000, n_tokens).astype(np.uint16)
    try:
        train, held = split_windows(tokens, seq, fraction)
    except ArchsmithError:
        assert -(-n_tokens // seq) < max(2, round(1 / fraction))  # refused only when too few windows to hold one out
        return
    windows = sorted([(int(i), train[k]) for k, i in enumerate(train.indices)] +
                     ([(int(i), held[k]) for k, i in enumerate(held.indices)] if held is not None else []))
    assert [i for i, _ in windows] == list(range(-(-n_tokens // seq)))  # train and held-out are disjoint and cover
    stream = np.concatenate([w for _, w in windows])
    assert np.array_equal(stream[stream >= 0], tokens)  # padding only at the very end
    assert (stream[n_tokens:] == -1).all()


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 200), per_rank=st.integers(1, 8), world=st.sampled_from([1, 2, 3, 4, 8]), step=st.integers(0, 50),
       seed=st.integers(0, 3))
def test_ranks_take_disjoint_shares_that_cover_the_step(size, per_rank, world, step, seed):
    batch = per_rank * world
    order = Order(size, seed)
    shares = []
    for rank in range(world):
        first, count = rank_slice(step, batch, rank, world)
        shares.append(list(range(first, first + count)))
    positions = [p for share in shares for p in share]
    assert positions == list(range(step * batch, (step + 1) * batch))  # disjoint, contiguous, cover the step
    assert sorted(order.take(0, size)) == list(range(size))  # one epoch visits every sample once
    assert order.take(step * batch, batch) == Order(size, seed).take(step * batch, batch)  # a function of the step alone


def test_document_mask_isolates_documents():
    from archsmith.network import CausalLM
    from archsmith.spec import ArchitectureSpec

    model = CausalLM.from_spec(ArchitectureSpec(**TINY_LM), seed=0).eval()
    a, b = [5, 6, 7, 8, 2], [9, 10, 11, 12, 13, 2]  # two documents, each ending in EOS (id 2)
    batch = lm_batch([np.array(a + b + [-1])], pad_id=0, eos_id=2, document_mask=True)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 0]]
    assert batch["labels"][0, -1] == -100 and batch["input_ids"][0, -1] == 0
    with torch.no_grad():
        packed = model(batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]).logits
        alone = model(torch.tensor([b])).logits
        unmasked = model(batch["input_ids"]).logits
    assert (packed[0, len(a):len(a) + len(b)] - alone[0]).abs().max() < 1e-5  # the second document cannot see the first
    assert (unmasked[0, len(a):len(a) + len(b)] - alone[0]).abs().max() > 1e-3  # without the mask it does


def test_shipped_corpus_is_small_and_regenerable():
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("make_corpus", STORIES.with_name("make_corpus.py"))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    import random

    rng = random.Random(module.SEED)
    assert STORIES.read_text(encoding="utf-8") == "\n\n".join(module.story(rng) for _ in range(module.STORIES)) + "\n"
    assert STORIES.stat().st_size < 300_000
