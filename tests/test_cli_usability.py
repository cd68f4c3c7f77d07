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
from pgprune_core.testing import save_run_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    return save_run_assets(tmp_path_factory.mktemp("assets"), calib_chars=20000, eval_chars=10000)


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


# -- cheap checks first, one line, no run directory left behind ---------------------------


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize(("replace", "message"), [
    ("--calib-file", "calibration file not found"),
    ("--eval-file", "evaluation file not found"),
    ("--model", "model directory not found"),
])
def test_missing_files_fail_before_anything_is_created(assets, tmp_path, replace, message):
    args = fast_args(assets, tmp_path / "run")
    args[args.index(replace) + 1] = str(tmp_path / "missing" / "x.txt")
    line = _one_error_line(invoke(*args))
    assert message in line
    assert not (tmp_path / "run").exists()


def test_missing_config_file_is_one_line(tmp_path):
    line = _one_error_line(invoke("run", "--config", str(tmp_path / "nope.yaml")))
    assert "config file not found" in line


def test_initializer_that_cannot_score_layers_suggests_one(assets, tmp_path):
    args = fast_args(assets, tmp_path / "run", "--granularity", "layer")
    args[args.index("--init") + 1] = "wanda-sp"
    line = _one_error_line(invoke(*args))
    assert "cannot score layer units" in line and "layerwise-ppl" in line
    assert not (tmp_path / "run").exists()


def test_rate_that_leaves_no_unit_is_refused_and_a_corrected_rerun_works(assets, tmp_path):
    out = tmp_path / "run"
    line = _one_error_line(invoke(*fast_args(assets, out, "--prune-rate", "0.99")))
    assert "leaves no" in line and "unit" in line
    assert not out.exists()
    result = invoke(*fast_args(assets, out, "--prune-rate", "0.3"))
    assert result.exit_code == 0, result.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_cpu_machine_is_one_line_for_run_and_eval(assets, tmp_path):
    line = _one_error_line(invoke(*fast_args(assets, tmp_path / "run", "--device", "cuda")))
    assert "CUDA is not available" in line and not (tmp_path / "run").exists()
    line = _one_error_line(invoke("eval", str(assets["model"]), "--device", "cuda",
                                  "--eval-file", str(assets["eval"])))
    assert "CUDA is not available" in line


# -- run.json: how a session ended, and wall time over sessions ---------------------------


def _config(assets, out: Path, **flat):
    base = {
        "model.name_or_path": str(assets["model"]), "data.calib_file": str(assets["calib"]),
        "data.eval_files": [str(assets["eval"])], "data.seq_len": 32,
        "data.cache_dir": str(assets["root"] / "cache"), "training.steps": 4,
        "training.batch_size": 2, "training.checkpoint_every": 2, "init.name": "random",
        "evaluation.evaluators": ["perplexity"], "evaluation.seq_len": 32,
        "output.dir": str(out),
    }
    return resolve_config(None, None, {**base, **flat})


def _marker(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize(("raised", "status"), [
    (KeyboardInterrupt, "interrupted"), (RuntimeError, "failed"),
])
def test_marker_records_how_a_session_ended(assets, tmp_path, monkeypatch, raised, status):
    from pgprune_core.run import pipeline

    def boom(*args, **kwargs):
        raise raised("stop")

    monkeypatch.setattr(pipeline, "finalize_model", boom)
    out = tmp_path / "run"
    with pytest.raises(raised):
        pipeline.run_pipeline(_config(assets, out))
    marker = _marker(out)
    assert marker["status"] == status and marker["wall_s"] > 0 and "ended" in marker


def test_wall_time_adds_up_over_a_resume(assets, tmp_path, monkeypatch):
    from pgprune_core.run import pipeline

    real = pipeline.finalize_model
    calls = []

    def interrupt_once(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "finalize_model", interrupt_once)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(_config(assets, out))
    first = _marker(out)["wall_s"]
    config = pipeline.RunDir(out).load_config()
    result = pipeline.run_pipeline(config, resume=out)
    run = result.metrics["run"]
    assert run["wall_s"] >= first >= run["optimize_s"]
    assert _marker(out)["status"] == "done" and _marker(out)["wall_s"] == run["wall_s"]


def test_a_marker_without_the_new_keys_still_resumes(assets, tmp_path, monkeypatch):
    from pgprune_core.run import pipeline

    monkeypatch.setattr(pipeline, "finalize_model", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(_config(assets, out))
    monkeypatch.undo()
    marker = _marker(out)
    for key in ("ended", "wall_s"):
        marker.pop(key)
    marker["status"] = "running"
    (out / "run.json").write_text(json.dumps(marker))
    result = pipeline.run_pipeline(pipeline.RunDir(out).load_config(), resume=out)
    assert result.metrics["run"]["wall_s"] >= result.metrics["run"]["optimize_s"]


# -- a short run is warned about; outputs get ordinary permissions ------------------------


class Recorder:
    def __init__(self):
        from pgprune_core.report.progress import SilentReporter

        self.messages: list[str] = []
        self._silent = SilentReporter()

    def message(self, text: str) -> None:
        self.messages.append(text)

    def __getattr__(self, name):
        return getattr(self._silent, name)


def test_short_run_is_warned_about(assets, tmp_path):
    from pgprune_core.run.pipeline import RECOMMENDED_STEPS, run_pipeline, warn_short_run

    reporter = Recorder()
    run_pipeline(_config(assets, tmp_path / "run"), reporter=reporter)
    assert any(m.startswith("warning: --steps 4 is far below") for m in reporter.messages)
    quiet = Recorder()
    warn_short_run(_config(assets, tmp_path / "x", **{"training.steps": RECOMMENDED_STEPS}),
                   True, quiet)
    warn_short_run(_config(assets, tmp_path / "x"), False, quiet)  # nothing is optimised
    assert quiet.messages == []


def test_outputs_have_consistent_permissions(assets, tmp_path):
    import os
    import stat

    from pgprune_core.run.pipeline import run_pipeline

    old = os.umask(0o022)
    try:
        out = run_pipeline(_config(assets, tmp_path / "run")).run_dir
    finally:
        os.umask(old)
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


# -- YAML errors, narrow terminals --------------------------------------------------------


def test_yaml_error_names_its_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  steps: 3\n pruning: [\n")
    line = _one_error_line(invoke("config", "show", "--config", str(path)))
    assert "not valid YAML/JSON: line 3, column 2" in line


def test_plugins_table_fits_80_columns(monkeypatch):
    from pgprune_core.report import console as consoles

    monkeypatch.setattr(consoles.console, "_width", 80)
    result = invoke("plugins")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    for column in ("kind", "name", "distribution", "version", "description"):
        assert column in result.output
    body = [line for line in lines if line.startswith("│")]
    assert body and all(line[2] != " " for line in body)  # no row wrapped onto a second line


# -- report.md says what the perplexity was measured on -----------------------------------


def test_report_states_perplexity_windows_and_tokens():
    from pgprune_core.report.markdown import render_report

    side = {"params": 10, "ppl": {"wikitext2": 12.0}, "ppl_tokens": {"wikitext2": 5 * 127},
            "ppl_seq_len": 128}
    text = render_report({"dense": side, "pruned": {**side, "ppl": {"wikitext2": 14.0}}})
    assert "Perplexity measured on wikitext2: 635 predicted tokens in 5 windows of 128." in text
    assert "Perplexity measured" not in render_report({"dense": {"params": 10}})
