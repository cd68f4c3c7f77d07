"""Token streams: the two joining conventions and the on-disk cache."""

from __future__ import annotations

import json

import pytest
import torch

import pgprune_core.data.tokens as tokens_mod
from pgprune_core.config.sections import DataSection
from pgprune_core.data import (
    EVAL_SEPARATOR,
    cache_root,
    calibration_source,
    calibration_stream,
    tokenize_source,
    tokenizer_fingerprint,
)
from pgprune_core.errors import DataError
from pgprune_core.testing import sample_text, tiny_tokenizer

DOCS = [p for p in sample_text(6000).split("\n\n") if p.strip()][:20]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return path


def _data(tmp_path, corpus, **kw):
    return DataSection(calib_file=str(corpus), cache_dir=str(tmp_path / "cache"), **kw)


def test_eos_joining_tokenizes_each_document_and_appends_eos(tmp_path, corpus, tokenizer):
    stream = tokenize_source(calibration_source(_data(tmp_path, corpus)), tokenizer, joining="eos")
    expected = []
    for doc in DOCS:
        expected += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert stream.dtype == torch.int64
    assert stream.tolist() == expected


def test_text_joining_is_one_string_with_special_tokens(tmp_path, corpus, tokenizer):
    stream = tokenize_source(calibration_source(_data(tmp_path, corpus)), tokenizer, joining="text")
    expected = tokenizer(EVAL_SEPARATOR.join(DOCS))["input_ids"]
    assert stream.tolist() == expected
    assert expected[0] == tokenizer.bos_token_id


def test_second_run_reads_the_cache(tmp_path, corpus, tokenizer, monkeypatch):
    source = calibration_source(_data(tmp_path, corpus))
    first = tokenize_source(source, tokenizer, joining="eos")
    entries = list((tmp_path / "cache" / "tokens").glob("*.safetensors"))
    assert len(entries) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized again despite a cache entry")

    monkeypatch.setattr(tokens_mod, "tokenize_texts", refuse)
    again = tokenize_source(calibration_source(_data(tmp_path, corpus)), tokenizer, joining="eos")
    assert torch.equal(first, again)
    # another slice, joining or tokenizer is another key, so it must tokenize
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_source(calibration_source(_data(tmp_path, corpus, calib_slice="0:5")),
                        tokenizer, joining="eos")
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_source(source, tokenizer, joining="text")
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_source(source, tiny_tokenizer(vocab_size=300), joining="eos")


def test_changed_file_and_damaged_entry_are_retokenized(tmp_path, corpus, tokenizer):
    data = _data(tmp_path, corpus)
    first = tokenize_source(calibration_source(data), tokenizer, joining="eos")
    corpus.write_text(corpus.read_text() + json.dumps({"text": "A brand new document."}) + "\n")
    second = tokenize_source(calibration_source(data), tokenizer, joining="eos")
    assert second.numel() > first.numel()
    entry = tokens_mod.cache_path(calibration_source(data), tokenizer, "eos", None)
    entry.write_bytes(b"not a safetensors file")
    third = tokenize_source(calibration_source(data), tokenizer, joining="eos")
    assert torch.equal(second, third)


def test_tokenizer_fingerprint_differs_between_tokenizers(tokenizer):
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(tiny_tokenizer())
    assert tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(tiny_tokenizer(vocab_size=300))


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("PGPRUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "pgprune"
    monkeypatch.setenv("PGPRUNE_CACHE", str(tmp_path / "pg"))
    assert cache_root() == tmp_path / "pg"
    assert cache_root(tmp_path / "explicit") == tmp_path / "explicit"


def test_calibration_stream_from_config(tmp_path, corpus, tokenizer):
    stream = calibration_stream(_data(tmp_path, corpus, seq_len=16), tokenizer, batch_size=4, seed=3)
    batch = stream.batch(0)
    assert batch.shape == (4, 16) and batch.dtype == torch.int64
    with pytest.raises(DataError, match=r"has [\d,]+ tokens; 8 segments of 4096 tokens need at least 32,768"):
        calibration_stream(_data(tmp_path, corpus, seq_len=4096), tokenizer, batch_size=8, seed=0)
