"""Atomic writers: the target is either the old or the new content, never partial."""

from __future__ import annotations

import json

import pytest

from pgprune_core.run.artifacts import (
    atomic_dir,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


def test_write_text_json_bytes_roundtrip(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "héllo")
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_json(tmp_path / "m.json", {"ppl": {"wikitext2": 12.5}, "n": float("inf")})
    assert json.loads((tmp_path / "m.json").read_text()) == {
        "ppl": {"wikitext2": 12.5}, "n": float("inf")}
    atomic_write_bytes(tmp_path / "x.bin", b"\x00\x01")
    assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.json", "x.bin"]


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"v": 1})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": Unserialisable()})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_dir_replaces_whole_directory(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "one.txt").write_text("1")
        assert not target.exists()
    assert [p.name for p in target.iterdir()] == ["one.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "two.txt").write_text("2")
    assert [p.name for p in target.iterdir()] == ["two.txt"]
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "three.txt").write_text("3")
        raise ValueError("crash")
    assert [p.name for p in target.iterdir()] == ["two.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
