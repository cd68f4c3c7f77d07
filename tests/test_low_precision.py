"""A bfloat16 model forwards in bfloat16, but everything the policy learns from is float32
or float64: the losses (float32, up-cast before the log-sum-exp), the baseline and the
advantages, the gradient, the projection and the probabilities (float64); the sampled
masks are 0/1, exact in float32."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import torch

from pgprune_core.config.resolve import resolve_config
from pgprune_core.model.masking import LossOracle
from pgprune_core.model.structure import UnitLayout
from pgprune_core.optim.baselines import LossBaseline
from pgprune_core.optim.policy import BernoulliPolicy
from pgprune_core.plugin.registry import get_registry
from pgprune_core.run.pipeline import run_pipeline
from pgprune_core.testing import save_run_assets, tiny_model


def test_bf16_losses_are_float32_cross_entropies_of_the_bf16_logits(registry):
    model = tiny_model("llama", dtype=torch.bfloat16)
    structure = registry.cls("adapter", "llama")().describe_model(model)
    granularities = {k: registry.cls("granularity", k)() for k in ("channel", "head")}
    layout = UnitLayout([g.units(structure) for g in granularities.values()])
    oracle = LossOracle(model, structure, layout, granularities)
    batch = torch.randint(3, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    masks = torch.ones(2, len(layout), dtype=torch.float64)
    masks[1, ::3] = 0.0
    losses = oracle.losses(batch, masks)
    assert losses.dtype == torch.float32
    with torch.no_grad():
        logits = model(input_ids=batch, use_cache=False).logits
    assert logits.dtype == torch.bfloat16
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    torch.testing.assert_close(losses[0], reference, atol=1e-5, rtol=0)
    assert abs(float(losses[1] - losses[0])) > 1e-3  # the mask reached the bf16 forward


def _recording(monkeypatch: pytest.MonkeyPatch, cls: Any, name: str,
               seen: dict[str, list[torch.dtype]]) -> None:
    """Wrap ``cls.name`` to record the dtypes of its tensor arguments and result."""
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        outputs = result if isinstance(result, tuple) else (result,)
        seen[f"{name} in"] += [t.dtype for t in tensors]
        seen[f"{name} out"] += [t.dtype for t in outputs if isinstance(t, torch.Tensor)]
        return result

    monkeypatch.setattr(cls, name, wrapper)


def test_a_bf16_run_keeps_the_policy_maths_in_float32_and_float64(tmp_path, monkeypatch):
    assets = save_run_assets(tmp_path / "assets", calib_chars=8000, eval_chars=4000)
    config = resolve_config(None, None, {
        "model.name_or_path": str(assets["model"]), "model.dtype": "bfloat16",
        "data.calib_file": str(assets["calib"]), "data.eval": [],
        "data.eval_files": [str(assets["eval"])], "data.seq_len": 16,
        "data.cache_dir": str(tmp_path / "cache"), "init.name": "magnitude",
        "training.steps": 3, "training.batch_size": 2, "evaluation.evaluators": ["perplexity"],
        "evaluation.seq_len": 16, "output.dir": str(tmp_path / "run"),
    })
    registry = get_registry()
    estimator = registry.cls("estimator", config.estimator.name)
    projector = registry.cls("projector", config.projector.name)
    seen: dict[str, list[torch.dtype]] = defaultdict(list)
    _recording(monkeypatch, LossOracle, "losses", seen)
    _recording(monkeypatch, LossBaseline, "advantages", seen)
    _recording(monkeypatch, estimator, "gradient", seen)
    _recording(monkeypatch, projector, "project", seen)
    _recording(monkeypatch, BernoulliPolicy, "sample", seen)
    setter = BernoulliPolicy.probs.fset
    assert setter is not None

    def set_probs(self: BernoulliPolicy, value: torch.Tensor) -> None:
        seen["probs set"].append(value.dtype)
        setter(self, value)

    monkeypatch.setattr(BernoulliPolicy, "probs", BernoulliPolicy.probs.setter(set_probs))
    run_pipeline(config)
    float64 = {torch.float64}
    expected = {
        "losses out": {torch.float32},
        "advantages in": float64,   # the losses, up-cast before the baseline sees them
        "advantages out": float64,
        "sample out": {torch.float32},                # 0/1 masks, exact in float32
        "gradient in": {torch.float32, torch.float64},  # those masks, float64 advantages
        "gradient out": float64,
        "project in": float64,
        "project out": float64,
        "probs set": float64,
    }
    for key, dtypes in expected.items():
        assert seen[key], key
        assert set(seen[key]) == dtypes, (key, seen[key])
