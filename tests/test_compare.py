"""`pgprune compare` on a tiny in-process model: the grid, shared phases, equal forward
budgets, resuming (finished cells are skipped), the tables and figures, user errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from pgprune_core.cli import build_app
from pgprune_core.compare.grid import (
    CompareRequest,
    build_cells,
    parse_list,
    split_estimator_overrides,
)
from pgprune_core.compare.report import hamming, initializer_mask
from pgprune_core.compare.runner import run_compare
from pgprune_core.errors import ConfigError, UnknownPluginError
from pgprune_core.plugin.registry import get_registry
from pgprune_core.testing import sample_text, save_tiny_model


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare-assets")
    model = save_tiny_model(root / "model", "llama", num_hidden_layers=2, intermediate_size=16)
    calib = root / "calib.txt"
    calib.write_text(sample_text(8000))
    held_out = root / "heldout.txt"
    held_out.write_text(sample_text(12000)[8000:])
    return {"model": model, "calib": calib, "eval": held_out, "root": root}


def _flags(assets: dict[str, Path]) -> dict[str, Any]:
    return {"model.name_or_path": str(assets["model"]), "data.calib_file": str(assets["calib"]),
            "data.eval_files": [str(assets["eval"])], "training.steps": 2,
            "training.batch_size": 2, "data.seq_len": 16}


OVERRIDES = {"data.eval": [], "data.cache_dir": None, "evaluation.evaluators": ["perplexity"],
             "evaluation.seq_len": 16, "output.save_model": False}


def _request(assets: dict[str, Path], out: Path, **fields: Any) -> CompareRequest:
    overrides = {**OVERRIDES, "data.cache_dir": str(assets["root"] / "cache")}
    base = {"out": out, "estimators": ("reinforce",), "inits": ("random",), "flags": _flags(assets),
            "overrides": overrides, "isolate": False}
    return CompareRequest(**{**base, **fields})


def _cli_args(assets: dict[str, Path], out: Path) -> list[str]:
    return [
        "compare", "--model", str(assets["model"]), "--calib-file", str(assets["calib"]),
        "--eval-file", str(assets["eval"]), "--steps", "2", "--batch-size", "2",
        "--seq-len", "16", "--evaluator", "perplexity", "--init", "random",
        "--estimator", "reinforce", "--estimator", "ppo", "--estimator", "gumbel",
        "--seeds", "0,1", "--rates", "0.5", "--equal-forwards", "--in-process", "--out", str(out),
        "--data.eval", "[]", "--data.cache_dir", str(out.parent / "cache"),
        "--evaluation.seq_len", "16", "--output.save_model", "false",
        "--estimator.ppo.lr", "0.01",
    ]


def test_grid_shares_phases_equalises_forwards_resumes_and_tabulates(assets, tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(build_app(), _cli_args(assets, out))
    assert result.exit_code == 0, result.output
    assert "pgprune compare (means over seeds)" in result.output

    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 6 and all((out / "runs" / r / "metrics.json").exists() for r in runs)
    # dense metrics once, initial scores once per seed, and every cell got copies
    shared = sorted(p.name for p in (out / "shared").iterdir())
    assert sum(n.startswith("dense-") for n in shared) == 1
    assert sum(n.startswith("init-scores-") for n in shared) == 2
    dense = json.loads(next((out / "shared").glob("dense-*.json")).read_text())
    for run in runs:
        metrics = json.loads((out / "runs" / run / "metrics.json").read_text())
        assert metrics["dense"] == dense
        assert metrics["run"]["forward_passes"] == 4  # 2 steps x 2 masks, the first estimator's
        assert metrics["run"]["peak_memory_start_bytes"] > 0
    ppo = json.loads((out / "runs" / "ppo-random-per-type-rate0.5-seed0" / "metrics.json").read_text())
    assert ppo["run"]["steps"] == 1  # 4 masks per step
    config = (out / "runs" / "ppo-random-per-type-rate0.5-seed0" / "config.yaml").read_text()
    assert "lr: 0.01" in config  # the per-estimator override reached ppo only
    assert "lr: 0.01" not in (out / "runs" / "gumbel-random-per-type-rate0.5-seed0" / "config.yaml").read_text()

    with (out / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["estimator"] for r in rows] == ["reinforce", "ppo", "gumbel"]
    assert {r["seeds"] for r in rows} == {"2"}
    assert [r["backward_passes"] for r in rows] == ["0", "0", "4"]
    assert all(float(r["ppl_heldout_mean"]) > 1 and r["ppl_heldout_std"] != "" for r in rows)
    assert rows[0]["hamming_vs_reinforce"] == "" and rows[0]["hamming_vs_gumbel"] != ""
    assert float(rows[0]["lr_start"]) == pytest.approx(2e-3 * 15)  # the capped step-count scaling
    markdown = (out / "compare.md").read_text()
    assert markdown.count("| reinforce | 50% | 2 |") == 1
    for pair in ("reinforce vs ppo", "reinforce vs gumbel", "ppo vs gumbel"):
        assert pair in markdown
    assert "--equal-forwards" in markdown
    for figure in ("loss_curves.png", "sparsity.png"):
        assert (out / figure).stat().st_size > 10_000

    # resume: only the cell whose results are gone runs again
    victim = out / "runs" / "gumbel-random-per-type-rate0.5-seed1"
    (victim / "metrics.json").unlink()
    stamps = {r: (out / "runs" / r / "metrics.json").stat().st_mtime_ns for r in runs if r != victim.name}
    request = build_request_from_manifest(assets, out)
    outcome = run_compare(request)
    assert outcome.ran == [victim.name]
    assert (victim / "metrics.json").exists()
    assert stamps == {r: (out / "runs" / r / "metrics.json").stat().st_mtime_ns for r in stamps}
    assert run_compare(request).ran == []


def build_request_from_manifest(assets: dict[str, Path], out: Path) -> CompareRequest:
    """The Python request equivalent to the CLI invocation above."""
    return _request(
        assets, out, estimators=("reinforce", "ppo", "gumbel"), seeds=(0, 1), rates=(0.5,),
        equal_forwards=True,
        overrides={**OVERRIDES, "data.cache_dir": str(out.parent / "cache"), "estimator.ppo.lr": 0.01},
    )


def test_a_cell_runs_in_its_own_process_and_other_settings_are_refused(assets, tmp_path):
    out = tmp_path / "cmp"
    outcome = run_compare(_request(assets, out, isolate=True))
    cell = outcome.cells[0]
    assert outcome.ran == [cell.name]
    assert (cell.path / "compare.log").exists()
    metrics = json.loads((cell.path / "metrics.json").read_text())
    assert metrics["run"]["estimator"] == "reinforce" and metrics["run"]["steps"] == 2
    changed = _request(assets, out, flags={**_flags(assets), "training.steps": 3})
    with pytest.raises(ConfigError, match="other settings"):
        run_compare(changed)


def test_grid_axes_default_to_the_configuration(assets, tmp_path):
    axes, cells = build_cells(_request(assets, tmp_path, estimators=("reinforce", "gumbel"),
                                       rates=(0.3, 0.5), inits=("random", "magnitude")))
    assert axes.seeds == (0,) and axes.budgets == ("per-type",)
    assert len(cells) == 2 * 2 * 2
    assert {c.config.init.name for c in cells} == {"random", "magnitude"}
    assert cells[0].name == "reinforce-random-per-type-rate0.3-seed0"
    assert all(c.config.output.dir == str(c.path) for c in cells)


def test_user_mistakes_are_one_line_errors(assets, tmp_path):
    registry = get_registry()
    with pytest.raises(ConfigError, match="needs --steps"):
        build_cells(_request(assets, tmp_path, equal_forwards=True,
                             flags={**_flags(assets), "training.steps": None}))
    with pytest.raises(UnknownPluginError):
        build_cells(_request(assets, tmp_path, estimators=("reinforce", "adam")))
    with pytest.raises(ConfigError, match="not compared here"):
        split_estimator_overrides({"estimator.ppo.lr": 1.0}, ["reinforce"], registry)
    for key in ("estimator.name", "init.name", "training.seed", "pruning.prune_rate"):
        with pytest.raises(ConfigError, match="set by the grid"):
            split_estimator_overrides({key: "x"}, ["reinforce"], registry)
    with pytest.raises(ConfigError, match="listed twice"):
        parse_list("0,1,0", int, "--seeds")
    with pytest.raises(ConfigError, match="cannot read"):
        parse_list("0.3,half", float, "--rates")
    result = CliRunner().invoke(build_app(), ["compare", "--out", str(tmp_path / "x"),
                                              "--estimator", "reinforce", "--estimator.ppo.lr", "1"])
    assert result.exit_code == 2 and "not compared here" in result.output


def test_estimator_overrides_are_routed():
    common, specific = split_estimator_overrides(
        {"estimator.lr": 0.1, "estimator.gumbel.tau_end": 0.2, "training.batch_size": 3},
        ["reinforce", "gumbel"], get_registry())
    assert common == {"training.batch_size": 3}
    assert specific == {"reinforce": {"estimator.lr": 0.1},
                        "gumbel": {"estimator.lr": 0.1, "estimator.tau_end": 0.2}}
    # a plain option reaches the estimators that have it; the metric-only 'none' has no lr
    _, specific = split_estimator_overrides({"estimator.lr": 0.1}, ["reinforce", "none"],
                                            get_registry())
    assert specific == {"reinforce": {"estimator.lr": 0.1}, "none": {}}
    with pytest.raises(ConfigError, match="no compared estimator has an option 'lrr'"):
        split_estimator_overrides({"estimator.lrr": 0.1}, ["reinforce", "none"], get_registry())


def test_mask_distances_and_the_initializer_mask(assets, tmp_path):
    a = torch.tensor([True, False, True, True])
    assert hamming(a, torch.tensor([True, True, False, True])) == 0.5
    _, cells = build_cells(_request(assets, tmp_path, rates=(0.5,)))
    kinds = {"head": {"layer": [0, 0, 1, 1], "index": [0, 1, 0, 1], "cost": [4, 4, 4, 4],
                      "keep": [1, 0, 1, 0]}}
    scores = torch.tensor([0.9, 0.1, 0.2, 0.8], dtype=torch.float64)
    keep = initializer_mask(cells[0], kinds, 2, scores)
    assert keep.tolist() == [True, False, False, True]  # the two lowest scores go


def test_dry_run_lists_the_cells(assets, tmp_path):
    args = [*_cli_args(assets, tmp_path / "cmp"), "--dry-run"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert "ppo-random-per-type-rate0.5-seed1" in result.output
    assert not (tmp_path / "cmp").exists()
