"""Corpora through ``datasets``: local files of every supported type, slices, text fields,
and one-line errors for every user mistake."""

from __future__ import annotations

import gzip
import json

import pytest

from pgprune_core.config.sections import DataSection
from pgprune_core.data import calibration_source, eval_sources
from pgprune_core.data.sources import file_stem, parse_slice
from pgprune_core.errors import DataError

DOCS = [f"Document number {i} talks about topic {i % 3}." for i in range(12)]


def _section(tmp_path, **kw):
    return DataSection(cache_dir=str(tmp_path / "cache"), **kw)


def _write(tmp_path, kind, field="text"):
    path = tmp_path / f"corpus.{kind}"
    if kind == "txt":
        path.write_text("\n".join(DOCS) + "\n")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    elif kind == "jsonl.gz":
        with gzip.open(path, "wt") as fh:
            fh.writelines(json.dumps({field: d}) + "\n" for d in DOCS)
    elif kind == "json":
        path.write_text(json.dumps([{field: d} for d in DOCS]))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({field: DOCS}), path)
    return path


@pytest.mark.parametrize("kind", ["txt", "jsonl", "jsonl.gz", "json", "parquet"])
def test_local_file_types_give_the_documents(tmp_path, kind):
    path = _write(tmp_path, kind)
    source = calibration_source(_section(tmp_path, calib_file=str(path)))
    assert source.name == "corpus"
    assert source.texts() == DOCS


def test_text_field_and_slice(tmp_path):
    path = _write(tmp_path, "jsonl", field="body")
    data = _section(tmp_path, calib_file=str(path), text_field="body", calib_slice="2:5")
    assert calibration_source(data).texts() == DOCS[2:5]
    data = _section(tmp_path, calib_file=str(path), text_field="body", calib_slice="-3:")
    assert calibration_source(data).texts() == DOCS[-3:]


def test_missing_text_field_lists_fields(tmp_path):
    path = _write(tmp_path, "jsonl", field="body")
    with pytest.raises(DataError, match=r"no field 'text'; its fields are body, id"):
        calibration_source(_section(tmp_path, calib_file=str(path))).texts()


def test_slice_selecting_nothing_and_bad_slice(tmp_path):
    path = _write(tmp_path, "jsonl")
    with pytest.raises(DataError, match=r"selects none of the 12 documents"):
        calibration_source(_section(tmp_path, calib_file=str(path), calib_slice="100:200")).texts()
    with pytest.raises(DataError, match="not Python slice syntax"):
        calibration_source(_section(tmp_path, calib_file=str(path), calib_slice="1-5"))
    assert parse_slice("1800:2000") == slice(1800, 2000)
    assert parse_slice("::2") == slice(None, None, 2)


def test_missing_file_unknown_type_and_empty_corpus(tmp_path):
    with pytest.raises(DataError, match="calibration file not found"):
        calibration_source(_section(tmp_path, calib_file=str(tmp_path / "nope.jsonl")))
    odd = tmp_path / "corpus.csv"
    odd.write_text("a,b\n")
    with pytest.raises(DataError, match=r"unknown file type; supported: .txt"):
        calibration_source(_section(tmp_path, calib_file=str(odd)))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    with pytest.raises(DataError, match="holds no text"):
        calibration_source(_section(tmp_path, calib_file=str(blank))).texts()


def test_malformed_json_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match="could not read file") as info:
        calibration_source(_section(tmp_path, calib_file=str(bad))).texts()
    assert "\n" not in str(info.value)


def test_unknown_corpus_lists_known(tmp_path):
    with pytest.raises(DataError, match=r"unknown corpus 'pile'; known corpora: c4, wikitext2"):
        calibration_source(_section(tmp_path, calib="pile"))


def test_offline_hub_says_how_to_pass_a_file(tmp_path, monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as info:
        calibration_source(_section(tmp_path, calib="c4")).texts()
    message = str(info.value)
    assert "Hugging Face hub" in message and "--calib-file" in message and "\n" not in message
    with pytest.raises(DataError, match="--eval-file"):
        eval_sources(_section(tmp_path, eval=["wikitext2"]))["wikitext2"].texts()


def test_eval_sources_named_and_files(tmp_path):
    path = _write(tmp_path, "jsonl.gz")
    sources = eval_sources(_section(tmp_path, eval=["wikitext2"], eval_files=[str(path)]))
    assert list(sources) == ["wikitext2", "corpus"]
    assert sources["wikitext2"].split == "test"
    assert sources["corpus"].texts() == DOCS
    assert file_stem(tmp_path / "wiki.test.raw") == "wiki.test"
    with pytest.raises(DataError, match="two evaluation sets are named 'corpus'"):
        other = tmp_path / "sub"
        other.mkdir()
        copy = other / "corpus.jsonl.gz"
        copy.write_bytes(path.read_bytes())
        eval_sources(_section(tmp_path, eval=[], eval_files=[str(path), str(copy)]))


def test_hub_sources_make_the_papers_load_dataset_calls(tmp_path):
    """The calls of SparseGPT/Wanda's data loaders (which the paper's code reuses)."""
    hf_cache = str(tmp_path / "cache" / "datasets")
    calib = calibration_source(_section(tmp_path, calib="c4")).load_arguments()
    assert calib == (("allenai/c4",), {
        "split": "train", "data_files": {"train": "en/c4-train.00000-of-01024.json.gz"},
        "cache_dir": hf_cache})
    evaluation = eval_sources(_section(tmp_path, eval=["c4", "wikitext2"]))
    assert evaluation["c4"].load_arguments() == (("allenai/c4",), {
        "split": "validation",
        "data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"},
        "cache_dir": hf_cache})
    assert evaluation["wikitext2"].load_arguments() == (
        ("Salesforce/wikitext", "wikitext-2-raw-v1"), {"split": "test", "cache_dir": hf_cache})
    wiki_calib = calibration_source(_section(tmp_path, calib="wikitext2")).load_arguments()
    assert wiki_calib[1]["split"] == "train"


def test_fingerprint_tracks_file_and_selection(tmp_path):
    path = _write(tmp_path, "jsonl")
    data = _section(tmp_path, calib_file=str(path))
    first = calibration_source(data).fingerprint
    assert calibration_source(data).fingerprint == first
    assert calibration_source(_section(tmp_path, calib_file=str(path), calib_slice="0:3")).fingerprint != first
    path.write_text(path.read_text() + json.dumps({"text": "one more"}) + "\n")
    assert calibration_source(data).fingerprint != first


def test_shared_c4_docs_slice(shared_asset, tmp_path):
    c4 = shared_asset("data", "c4-en-validation-2k", "c4_validation_2k.jsonl.gz")
    texts = calibration_source(_section(tmp_path, calib_file=str(c4), calib_slice="1800:2000")).texts()
    assert len(texts) == 200
    parquet = c4.with_name("c4_validation_2k.parquet")
    same = calibration_source(_section(tmp_path, calib_file=str(parquet), calib_slice="1800:2000"))
    assert same.texts() == texts
