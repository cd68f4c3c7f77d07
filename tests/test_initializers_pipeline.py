"""The calibrated initializers inside ``pgprune run --estimator none``: their options come
through the run configuration, they get the run's calibration windows and oracle, and the
mask that is cut is the metric's own (per kind, every kept unit outscores every cut one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pgprune_core.config.resolve import resolve_config
from pgprune_core.run.pipeline import run_pipeline
from pgprune_core.testing import sample_text, save_tiny_model


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("init-assets")
    calib = root / "calib.txt"
    calib.write_text(sample_text(30000))
    held_out = root / "heldout.txt"
    held_out.write_text(sample_text(34000)[30000:])
    return {"model": save_tiny_model(root / "model", "llama3"), "calib": calib,
            "eval": held_out, "root": root}


@pytest.mark.parametrize(("init", "granularity", "options"), [
    ("wanda-sp", "channel,head", {"init.n_sequences": 6, "init.seq_len": 48, "init.batch_size": 4}),
    ("taylor", "channel,head,layer", {"init.n_sequences": 4, "init.seq_len": 32,
                                      "init.variant": "vectorize"}),
    ("layerwise-ppl", "layer", {"init.n_sequences": 4, "init.seq_len": 32, "init.metric": "ppl"}),
])
def test_metric_alone_prunes_by_its_own_scores(assets, tmp_path, init, granularity, options):
    flat = {
        "model.name_or_path": str(assets["model"]),
        "data.calib_file": str(assets["calib"]),
        "data.eval": [],
        "data.eval_files": [str(assets["eval"])],
        "data.cache_dir": str(assets["root"] / "cache"),
        "pruning.granularity": granularity,
        "pruning.prune_rate": 0.5,
        "init.name": init,
        "estimator.name": "none",
        "training.batch_size": 2,
        "evaluation.evaluators": ["perplexity"],
        "evaluation.dense": False,
        "evaluation.seq_len": 32,
        "output.dir": str(tmp_path / "run"),
        "output.save_model": False,
        **options,
    }
    config = resolve_config(None, None, flat)
    assert config.init.name == init and config.init.n_sequences == options["init.n_sequences"]
    result = run_pipeline(config)
    scores = torch.load(result.run_dir / "init_scores.pt", weights_only=True)
    masks = json.loads((result.run_dir / "masks.json").read_text())
    start = 0
    for kind in granularity.split(","):
        keep = torch.tensor(masks["kinds"][kind]["keep"], dtype=torch.bool)
        part = scores[start:start + keep.numel()]
        start += keep.numel()
        assert int((~keep).sum()) == round(0.5 * keep.numel())
        assert float(part[keep].min()) >= float(part[~keep].max())
    assert start == scores.numel()
    assert result.metrics["pruned"]["params"] < result.metrics["dense"]["params"]


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_run_calibration_provider_gives_exactly_the_windows_asked(sampling) -> None:
    """Initializers get ``n_sequences`` windows in all (a count that is not a multiple of the
    loop's batch size included), the same ones on every call, in batches no larger than it."""
    from pgprune_core.run.pipeline import calibration_batches

    config = resolve_config(None, None, {"training.batch_size": 8, "data.sampling": sampling})
    tokens = torch.arange(10_000) % 997
    provider = calibration_batches(config, tokens)
    first = list(provider(20, 16))
    assert [b.shape for b in first] == [(8, 16), (8, 16), (4, 16)]
    windows = torch.cat(first)
    assert torch.equal(windows, torch.cat(list(provider(20, 16))))
    # every row is a contiguous window of the token stream (tokens count up modulo 997)
    assert torch.equal(windows, (windows[:, :1] + torch.arange(16)) % 997)
    # many long windows from a text shorter than their total (random windows overlap)
    if sampling == "random":
        short = torch.arange(3_000) % 997
        assert sum(b.shape[0] for b in calibration_batches(config, short)(64, 128)) == 64
