"""The Typer CLI through CliRunner, and a real third-party plugin distribution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pgprune_core.cli import build_app

FIXTURE = Path(__file__).parent / "fixtures" / "theirs-plugin"


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "plugins", "config"):
        assert command in result.output


def test_plugins_json_lists_builtins():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {"kind", "name", "distribution", "version"} <= set(rows[0])
    names = {(r["kind"], r["name"]) for r in rows}
    assert ("projector", "bisection") in names and ("estimator", "none") in names


def test_plugins_table_has_columns():
    result = invoke("plugins")
    assert result.exit_code == 0
    for column in ("kind", "name", "distribution", "version", "description"):
        assert column in result.output


def test_unknown_estimator_exits_2_with_one_line():
    result = invoke("run", "--estimator", "nosuch")
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "unknown estimator 'nosuch'" in lines[0] and "valid estimators" in lines[0]
    assert "Traceback" not in result.output


def test_prune_rate_out_of_range_exits_2():
    result = invoke("run", "--prune-rate", "1.5")
    assert result.exit_code == 2
    assert "(0, 1)" in result.output and "1.5" in result.output


def test_config_show_resolves_flags_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"training": {"steps": 3}, "pruning": {"prune_rate": 0.2}}))
    result = invoke("config", "show", "--config", str(path), "--prune-rate", "0.4",
                    "--estimator.lr", "3e-3", "--training.log_every=2")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["pruning"]["prune_rate"] == 0.4
    assert shown["training"]["steps"] == 3
    assert shown["training"]["log_every"] == 2
    assert shown["estimator"]["lr"] == pytest.approx(0.003)


def test_config_file_with_unknown_key_exits_2(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"calib_fil": "x.txt"}}))
    result = invoke("config", "show", "--config", str(path))
    assert result.exit_code == 2
    assert "unknown key 'calib_fil' in section 'data'" in result.output


def test_run_dry_run_prints_config():
    result = invoke("run", "--dry-run", "--steps", "2", "--granularity", "layer")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["pruning"]["granularity"] == ["layer"]


def test_dry_run_and_config_show_print_what_the_demo_run_uses(tmp_path, monkeypatch):
    from pgprune_core.data.cache import CACHE_ENV
    from pgprune_core.demo import DEMO_STEPS

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    for command in (("run", "--dry-run"), ("config", "show")):
        shown = yaml.safe_load(invoke(*command).output)
        assert shown["training"]["steps"] == DEMO_STEPS
        assert Path(shown["data"]["calib_file"]).is_file()
        assert shown["data"]["eval"] == [] and len(shown["data"]["eval_files"]) == 1
    named = yaml.safe_load(invoke("run", "--dry-run", "--model", "some/model").output)
    assert named["training"]["steps"] is None and named["data"]["calib_file"] is None


@pytest.fixture(scope="module")
def theirs_site(tmp_path_factory) -> Path:
    """pip-installs the throw-away plugin distribution into a private target directory."""
    target = tmp_path_factory.mktemp("theirs-site")
    build = tmp_path_factory.mktemp("theirs-build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(FIXTURE)],
        check=True, cwd=build, env={**os.environ, "PIP_NO_CACHE_DIR": "1"},
    )
    assert list(target.glob("pgprune_theirs-1.2.3.dist-info"))
    return target


def _pgprune(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pgprune_core", *args], capture_output=True,
                          text=True, env=env)


def test_third_party_distribution_is_discovered(theirs_site):
    result = _pgprune(theirs_site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    (row,) = [r for r in rows if r["name"] == "theirs"]
    assert row == {**row, "kind": "estimator", "distribution": "pgprune-theirs", "version": "1.2.3"}


def test_third_party_options_validate(theirs_site):
    ok = _pgprune(theirs_site, "config", "show", "--estimator", "theirs", "--estimator.their_option", "3")
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["estimator"] == {"name": "theirs", "their_option": 3}
    bad = _pgprune(theirs_site, "config", "show", "--estimator", "theirs", "--estimator.their_option", "many")
    assert bad.returncode == 2
    assert "estimator.their_option" in bad.stderr and "Traceback" not in bad.stderr


def test_ctrl_c_outside_the_loop_is_one_line_and_status_130(monkeypatch):
    """A KeyboardInterrupt while a command loads or evaluates ends it like SIGINT: exit 130
    with one line, not click's "Aborted!" and status 1."""
    import pgprune_core.run.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_pipeline", interrupted)
    result = invoke("run", "--estimator", "none", "--init", "magnitude")
    assert result.exit_code == 130, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "Aborted" not in result.output
