"""What a new user hits first: offline runs with local files, one-line errors, run.json
status, help and version, and the Python entry point."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pgprune_core.cli import build_app
from pgprune_core.config.resolve import resolve_config
from pgprune_core.testing import sample_text, save_tiny_model


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    model = save_tiny_model(root / "model", "llama", num_hidden_layers=4)
    calib = root / "calib.txt"
    calib.write_text(sample_text(20000))
    held_out = root / "heldout.txt"
    held_out.write_text(sample_text(30000)[20000:])
    return {"model": model, "calib": calib, "eval": held_out, "root": root}


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def fast_args(assets, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", str(assets["model"]), "--calib-file", str(assets["calib"]),
        "--eval-file", str(assets["eval"]), "--seq-len", "32", "--steps", "2",
        "--batch-size", "2", "--init", "random", "--out", str(out),
        "--evaluator", "perplexity", "--evaluation.seq_len", "32",
        "--data.cache_dir", str(assets["root"] / "cache"), *extra,
    ]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# -- evaluation files replace the default corpus ------------------------------------------


def test_eval_files_replace_the_default_corpus():
    config = resolve_config(None, {"data.eval_files": ["a.txt"]}, None)
    assert config.data.eval == [] and config.data.eval_files == ["a.txt"]
    both = resolve_config(None, {"data.eval_files": ["a.txt"], "data.eval": ["wikitext2"]}, None)
    assert both.data.eval == ["wikitext2"]
    assert resolve_config(None, None, None).data.eval == ["wikitext2"]


def test_eval_files_in_a_config_file_replace_the_default_corpus(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  eval_files: [a.txt]\n")
    assert resolve_config(path).data.eval == []
    path.write_text("data:\n  eval_files: [a.txt]\n  eval: [c4]\n")
    assert resolve_config(path).data.eval == ["c4"]


def test_run_with_local_files_needs_no_network(assets, tmp_path, no_network):
    out = tmp_path / "run"
    result = invoke(*fast_args(assets, out))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["pruned"]["ppl"]) == {"heldout"}


# -- the Python entry point ---------------------------------------------------------------


def test_python_run_applies_overrides_to_a_run_config(monkeypatch):
    import pgprune_core
    from pgprune_core.errors import ConfigError
    from pgprune_core.run import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda config, **kw: seen.append(config))
    base = resolve_config(None, {"pruning.prune_rate": 0.2}, None)
    pgprune_core.run(base, pruning__prune_rate=0.4, estimator__lr=0.01)
    assert seen[-1].pruning.prune_rate == 0.4 and seen[-1].estimator.lr == 0.01
    assert base.pruning.prune_rate == 0.2  # the caller's config is not changed
    pgprune_core.run(base)
    assert seen[-1] is base
    with pytest.raises(ConfigError, match="unknown key"):
        pgprune_core.run(base, pruning__prune_rat=0.4)


# -- help, version, "did you mean" --------------------------------------------------------


def test_version_and_short_help():
    from pgprune_core import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"pgprune {__version__}"
    for args in (["-h"], ["run", "-h"], ["eval", "-h"], ["config", "show", "-h"]):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage:" in result.output


def test_run_help_shows_defaults_and_no_bool_metavar(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = invoke("run", "--help")
    assert result.exit_code == 0
    assert "[default: reinforce]" in result.output and "[default: 0.3]" in result.output
    assert "<bool>" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--estimator", "reinfroce"], "unknown estimator 'reinfroce' (did you mean 'reinforce'?)"),
    (["--estimator.lrr", "3"], "unknown key 'lrr' in section 'estimator' (did you mean 'lr'?)"),
    (["--data.calib_fil", "x"], "(did you mean 'calib_file'?)"),
    (["--prune-rat", "0.3"], "unexpected argument '--prune-rat' (did you mean --prune-rate?)"),
])
def test_misspellings_get_a_suggestion(args, message):
    result = invoke("config", "show", *args)
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
