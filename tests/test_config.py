"""RunConfig assembly: defaults < file < flags < dotted overrides, and readable errors."""

from __future__ import annotations

import json

import pytest
import yaml

from pgprune_core.config.resolve import (
    dump_config,
    load_config_file,
    parse_overrides,
    parse_value,
    resolve_config,
)
from pgprune_core.errors import ConfigError, UnknownPluginError


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    config = resolve_config()
    assert config.estimator.name == "reinforce"
    assert config.init.name == "wanda-sp"
    assert config.pruning.granularity == ["channel", "head"]
    text = dump_config(config)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    again = resolve_config(path)
    assert again.model_dump() == config.model_dump()


def test_precedence_file_then_flags_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "pruning": {"prune_rate": 0.2, "budget": "global"},
        "training": {"steps": 5, "batch_size": 4},
        "estimator": {"name": "reinforce", "lr": 0.01},
    }))
    config = resolve_config(
        path,
        flags={"pruning.prune_rate": 0.4, "training.steps": 7},
        overrides={"training.steps": 9, "estimator.lr": 0.003},
    )
    assert config.pruning.prune_rate == 0.4  # flag beats file
    assert config.pruning.budget == "global"  # file beats default
    assert config.training.batch_size == 4
    assert config.training.steps == 9  # override beats flag
    assert config.estimator.lr == pytest.approx(0.003)


def test_json_file_is_accepted(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"pruning": {"prune_rate": 0.35}}))
    assert resolve_config(path).pruning.prune_rate == 0.35


def test_changing_plugin_drops_the_previous_plugins_options(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"estimator": {"name": "reinforce", "lr": 0.01}}))
    config = resolve_config(path, flags={"estimator.name": "none"})
    assert config.estimator.name == "none"


def test_plugin_options_given_before_the_plugin_name_are_kept():
    """Overrides select the plugin first, whatever their order on the command line."""
    pytest.importorskip("pgprune_ppo")
    for order in (
        {"estimator.lr": 1e-3, "estimator.name": "ppo"},
        {"estimator.name": "ppo", "estimator.lr": 1e-3},
    ):
        config = resolve_config(None, None, order)
        assert (config.estimator.name, config.estimator.lr) == ("ppo", 1e-3)


@pytest.mark.parametrize("rate", [0.0, 1.0, 1.5, -0.1])
def test_prune_rate_outside_unit_interval_names_the_range(rate):
    with pytest.raises(ConfigError, match=r"pruning.prune_rate: .*\(0, 1\)"):
        resolve_config(flags={"pruning.prune_rate": rate})


def test_unknown_key_names_key_and_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"estimator": {"name": "reinforce", "lrr": 0.1}}))
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' in section 'estimator'"):
        resolve_config(path)
    path.write_text(yaml.safe_dump({"training": {"stepz": 1}}))
    with pytest.raises(ConfigError, match=r"unknown key 'stepz' in section 'training'"):
        resolve_config(path)
    path.write_text(yaml.safe_dump({"nonsense": {}}))
    with pytest.raises(ConfigError, match=r"unknown key 'nonsense' in section 'top level'"):
        resolve_config(path)


def test_unknown_plugin_lists_valid_names():
    with pytest.raises(UnknownPluginError, match=r"unknown estimator 'nosuch'; valid estimators: .*reinforce"):
        resolve_config(flags={"estimator.name": "nosuch"})
    with pytest.raises(UnknownPluginError, match=r"unknown granularity 'neuron'"):
        resolve_config(flags={"pruning.granularity": "channel,neuron"})


def test_bad_files_fail_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruning: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML/JSON"):
        load_config_file(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config_file(scalar)


def test_parse_values_and_overrides():
    assert parse_value("3e-3") == pytest.approx(0.003)
    assert parse_value("10") == 10 and isinstance(parse_value("10"), int)
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("cosine") == "cosine"
    assert parse_overrides(["--estimator.lr", "3e-3", "--training.steps=4"]) == {
        "estimator.lr": pytest.approx(0.003), "training.steps": 4}
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--estimator.lr"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["stray"])


def test_protect_layers_and_granularity_strings():
    config = resolve_config(flags={"pruning.protect_layers": "4,2", "pruning.granularity": "layer"})
    assert config.pruning.protect_layers == (4, 2)
    assert config.pruning.granularity == ["layer"]
    with pytest.raises(ConfigError, match="FIRST,LAST"):
        resolve_config(flags={"pruning.protect_layers": "4"})


def test_evaluators_accept_names():
    config = resolve_config(overrides={"evaluation.evaluators": "perplexity"})
    assert [e.name for e in config.evaluation.evaluators] == ["perplexity"]


def test_config_digest_covers_what_is_learnt_not_how_it_runs():
    """``run.json``'s digest detects an edited config.yaml on resume; the output section and
    the thread count may change (another machine), and runs made before ``training.threads``
    existed keep their digest."""
    import hashlib

    from pgprune_core.run.rundir import config_digest

    base = resolve_config()
    assert config_digest(base) == config_digest(resolve_config(None, None, {
        "training.threads": 3, "output.dir": "elsewhere", "output.save_model": False}))
    assert config_digest(base) != config_digest(resolve_config(None, None, {"estimator.lr": 0.1}))
    assert config_digest(base) != config_digest(resolve_config(None, None, {"pruning.shape": "uniform"}))
    assert config_digest(base) == config_digest(resolve_config(None, None, {"output.format": "decilm"}))
    assert config_digest(base) == config_digest(
        resolve_config(None, None, {"training.snapshot_every": 50}))
    assert config_digest(base) == config_digest(
        resolve_config(None, None, {"training.skip_pruned": "off"}))
    assert config_digest(base) == config_digest(
        resolve_config(None, None, {"training.collective_timeout_s": 60}))
    assert config_digest(base) != config_digest(
        resolve_config(None, None, {"training.objective": "kl"}))
    legacy = json.loads(base.model_dump_json())
    legacy.pop("output")
    del legacy["training"]["threads"]  # a config written before the key existed
    del legacy["pruning"]["shape"], legacy["pruning"]["channel_multiple"]  # ... and these
    del legacy["training"]["snapshot_every"], legacy["training"]["objective"]
    del legacy["training"]["skip_pruned"], legacy["training"]["collective_timeout_s"]
    del legacy["estimator"]["advantage_scale"], legacy["estimator"]["scale_window"]
    del legacy["estimator"]["preset"]
    digest = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    assert config_digest(base) == digest
