"""Plugin discovery, attribution, duplicate refusal, broken-plugin isolation, disabling."""

from __future__ import annotations

import re
import sys
import types
from importlib import metadata
from pathlib import Path
from typing import Literal

import pytest
from pydantic import create_model

from pgprune_core import Estimator, PluginConfig, StepContext, StepStats, hookimpl
from pgprune_core.config.sections import DEFAULTS
from pgprune_core.errors import MissingPluginError, UnknownPluginError
from pgprune_core.plugin.manager import DEFAULT_PLUGINS, PluginSet
from pgprune_core.plugin.registry import (
    PROVIDED_BY,
    Registry,
    estimators,
    get_registry,
    temporary_plugin,
)


def _estimator_plugin(name: str, option_default: int = 1) -> types.SimpleNamespace:
    Config = create_model(
        "Config", __base__=PluginConfig,
        name=(Literal[name], name), option=(int, option_default),  # type: ignore[valid-type]
    )

    cls = type(
        f"Est_{name}",
        (Estimator,),
        {"name": name, "Config": Config, "__doc__": f"Estimator {name}.",
         "step": lambda self, ctx: StepStats(loss=0.0)},
    )

    @hookimpl
    def pgprune_register_estimators(register):
        register(cls)

    return types.SimpleNamespace(pgprune_register_estimators=pgprune_register_estimators, cls=cls)


def test_builtins_are_registered_as_plugins(registry):
    for name in DEFAULT_PLUGINS:
        assert registry.plugins.pm.get_plugin(name) is not None
    spec = registry.get("projector", "bisection")
    assert spec.origin.distribution == "pgprune-core"
    assert spec.origin.plugin == "builtin-bisection"
    assert "none" in estimators()


def test_temporary_plugin_is_registered_then_removed(registry):
    plugin = _estimator_plugin("throwaway")
    with temporary_plugin(plugin, "throwaway-plugin", distribution="throwaway-dist"):
        spec = get_registry().get("estimator", "throwaway")
        assert spec.cls is plugin.cls
        assert spec.origin.distribution == "throwaway-dist"
        assert spec.description == "Estimator throwaway."
    assert "throwaway" not in get_registry().names("estimator")


def test_duplicate_name_is_refused_with_both_origins(registry):
    first, second = _estimator_plugin("dup"), _estimator_plugin("dup", option_default=2)
    with (temporary_plugin(first, "first-plugin", distribution="dist-one"),
          temporary_plugin(second, "second-plugin", distribution="dist-two") as reg):
        assert reg.get("estimator", "dup").cls is first.cls  # the first one stays
        failure = next(f for f in reg.failures if f.plugin == "second-plugin")
        assert "dist-one" in failure.error and "dist-two" in failure.error
        assert "registered twice" in failure.error


def test_broken_hook_is_isolated(registry):
    @hookimpl
    def pgprune_register_estimators(register):
        raise ImportError("No module named 'missing_dependency'")

    broken = types.SimpleNamespace(pgprune_register_estimators=pgprune_register_estimators)
    good = _estimator_plugin("still-works")
    with (temporary_plugin(broken, "broken-plugin", distribution="broken-dist"),
          temporary_plugin(good, "good-plugin") as reg):
        assert "still-works" in reg.names("estimator")
        (failure,) = [f for f in reg.failures if f.plugin == "broken-plugin"]
        assert failure.distribution == "broken-dist"
        assert "missing_dependency" in failure.error


def test_invalid_plugin_class_is_reported(registry):
    class NoConfigName(Estimator):
        """Its Config declares another name than the class (a missing one is derived)."""

        name = "bad-config"

        class Config(PluginConfig):
            name: Literal["other"] = "other"

        def step(self, ctx: StepContext) -> StepStats:
            return StepStats(loss=0.0)

    @hookimpl
    def pgprune_register_estimators(register):
        register(NoConfigName)

    plugin = types.SimpleNamespace(pgprune_register_estimators=pgprune_register_estimators)
    with temporary_plugin(plugin, "bad-plugin") as reg:
        (failure,) = [f for f in reg.failures if f.plugin == "bad-plugin"]
        assert "Literal['bad-config']" in failure.error


class _FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.metadata = {"Name": name}
        self.version = version


class _FakeEntryPoint:
    def __init__(self, name: str, target, dist: _FakeDist) -> None:
        self.name, self._target, self.dist = name, target, dist

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_entry_point_import_failure_is_reported_and_others_load(monkeypatch):
    good_module = types.ModuleType("good_ep_module")
    good = _estimator_plugin("from-entry-point")
    good_module.pgprune_register_estimators = good.pgprune_register_estimators
    eps = [
        _FakeEntryPoint("broken-ep", ModuleNotFoundError("No module named 'nope'"),
                        _FakeDist("pgprune-broken", "0.9")),
        _FakeEntryPoint("good-ep", good_module, _FakeDist("pgprune-good", "2.0")),
    ]
    monkeypatch.setattr(metadata, "entry_points", lambda group: eps if group == "pgprune" else [])
    reg = Registry(PluginSet())
    assert reg.get("estimator", "from-entry-point").origin.distribution == "pgprune-good"
    (failure,) = reg.failures
    assert (failure.plugin, failure.distribution, failure.version) == ("broken-ep", "pgprune-broken", "0.9")
    assert "No module named 'nope'" in failure.error


def test_disable_list_skips_plugins_and_components(monkeypatch):
    monkeypatch.setenv("PGPRUNE_DISABLE_PLUGINS", "builtin-taylor, none")
    reg = Registry(PluginSet())
    assert "taylor" not in reg.names("initializer")
    assert "none" not in reg.names("estimator")
    assert "wanda-sp" in reg.names("initializer")


def test_essential_builtins_cannot_be_disabled(monkeypatch):
    """The unit kinds and the projection survive the disable list, by plugin or by name."""
    monkeypatch.setenv("PGPRUNE_DISABLE_PLUGINS", "builtin-bisection,channel,builtin-head,layer")
    reg = Registry(PluginSet())
    assert "bisection" in reg.names("projector")
    assert {"channel", "head", "layer"} <= set(reg.names("granularity"))


def test_unknown_name_lists_valid_ones(registry):
    with pytest.raises(UnknownPluginError) as info:
        registry.get("estimator", "nosuch")
    assert "valid estimators:" in str(info.value) and "none" in str(info.value)


def test_plugin_modules_do_not_leak_into_sys_modules_of_core():
    """The core never imports a plugin distribution's package itself."""
    import pgprune_core  # noqa: F401

    core_modules = [m for m in sys.modules if m.startswith("pgprune_core")]
    for name in core_modules:
        module = sys.modules[name]
        source = getattr(module, "__file__", "") or ""
        if source.endswith(".py"):
            text = Path(source).read_text(encoding="utf-8")
            for plugin_pkg in ("pgprune_reinforce", "pgprune_llama", "pgprune_mistral",
                               "pgprune_mixtral", "pgprune_qwen_moe",
                               "pgprune_gumbel", "pgprune_ppo", "pgprune_lm_eval"):
                assert f"import {plugin_pkg}" not in text and f"from {plugin_pkg}" not in text, name


def test_install_command_installs_every_plugin_distribution() -> None:
    """README's install (``pip install -r requirements-dev.txt``) must reach every plugin
    under ``plugins/``: a plugin left out is a plugin whose tests cannot import it."""
    root = Path(__file__).resolve().parent.parent
    lines = (root / "requirements-dev.txt").read_text().splitlines()
    editable = {line.split(None, 1)[1].strip() for line in lines if line.startswith("-e ")}
    plugin_dirs = {f"plugins/{p.name}" for p in (root / "plugins").iterdir()
                   if (p / "pyproject.toml").exists()}
    assert plugin_dirs, "no plugin distributions found"
    assert plugin_dirs <= editable, f"not installed by requirements-dev.txt: {plugin_dirs - editable}"


def _pyproject(path: Path) -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _dist_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0] for req in requirements}


def test_batteries_distribution_installs_what_the_defaults_name(registry) -> None:
    """``pip install pgprune`` gives a working default run: it depends on the core and on the
    distributions of the default estimator and of the adapter of a LLaMA model; ``[all]``
    adds every other plugin distribution of this repository."""
    root = Path(__file__).resolve().parent.parent
    meta = _pyproject(root / "packaging" / "pgprune" / "pyproject.toml")["project"]
    assert meta["name"] == "pgprune"
    assert _pyproject(root / "pyproject.toml")["project"]["name"] == "pgprune-core"
    default_estimator = DEFAULTS["estimator"]["name"]
    needed = {"pgprune-core", registry.get("estimator", default_estimator).origin.distribution,
              registry.get("adapter", "llama").origin.distribution}
    assert _dist_names(meta["dependencies"]) == needed
    plugin_dists = {_pyproject(p)["project"]["name"] for p in root.glob("plugins/*/pyproject.toml")}
    assert _dist_names(meta["dependencies"]) | _dist_names(meta["optional-dependencies"]["all"]) \
        == plugin_dists | {"pgprune-core"}
    for pyproject in root.glob("plugins/*/pyproject.toml"):
        deps = _dist_names(_pyproject(pyproject)["project"]["dependencies"])
        assert "pgprune-core" in deps and "pgprune" not in deps, pyproject


def test_provided_by_names_the_distribution_that_registers_each_plugin(registry) -> None:
    for (kind, name), distribution in PROVIDED_BY.items():
        assert registry.get(kind, name).origin.distribution == distribution, (kind, name)


def test_framework_only_install_names_the_missing_distribution(monkeypatch) -> None:
    """Without the plugin distributions (simulated by disabling them), the default run
    fails in one line naming the distribution to install, before any work."""
    monkeypatch.setenv("PGPRUNE_DISABLE_PLUGINS", "reinforce,llama")
    reg = Registry(PluginSet())
    with pytest.raises(MissingPluginError, match="distribution pgprune-reinforce") as info:
        reg.get("estimator", "reinforce")
    assert "pip install pgprune-reinforce" in str(info.value)
    with pytest.raises(UnknownPluginError):
        reg.get("estimator", "no-such-estimator")
    from pgprune_core.model.hf_adapter import adapter_for_config
    from pgprune_core.testing import tiny_config

    with pytest.raises(MissingPluginError, match="pgprune-llama"):
        adapter_for_config(tiny_config("llama"), reg)


def test_temporary_plugin_accepts_an_installed_plugin(registry):
    """The recipe of docs/plugins.md works when the plugin is installed (entry point)."""
    import pgprune_reinforce.plugin

    from pgprune_core.testing import temporary_plugin as from_testing

    assert from_testing is temporary_plugin
    with temporary_plugin(pgprune_reinforce.plugin, "my-reinforce") as reg:
        assert "reinforce" in reg.names("estimator")
    assert "reinforce" in get_registry().names("estimator")
    assert not get_registry().failures


def test_fixtures_ship_as_a_pytest_plugin(tmp_path):
    """A plugin's tests find ``registry`` and ``shared_asset`` from their own folder."""
    import subprocess

    eps = metadata.entry_points(group="pytest11")
    assert any(ep.value == "pgprune_core.testing.pytest_plugin" for ep in eps)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'pgprune-toy'\n")
    (tmp_path / "test_toy.py").write_text(
        "def test_it(registry, shared_asset, quadratic_oracle):\n"
        "    assert 'reinforce' in registry.names('estimator')\n"
        "    assert callable(shared_asset)\n"
    )
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "test_toy.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
