"""Models dispatched by accelerate with CPU and disk offload give the numbers of the same
model loaded whole: masked losses, initializer scores, a whole run, the cut and saved model.

The tiny LLaMA is loaded once normally and once with ``device_map="auto"`` and a CPU
budget (``max_memory``) of a fraction of its bytes, so that some decoder layers stay in
memory and the rest are offloaded to disk (their weights on ``meta``, read from the
checkpoint by accelerate's hooks at every forward).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("accelerate")

from pgprune_core.config.resolve import resolve_config
from pgprune_core.errors import ConfigError, ModelError
from pgprune_core.interfaces import InitContext, LoadedModel, ModelSource
from pgprune_core.model.granularity.layer import LayerGranularity
from pgprune_core.model.masking import LossOracle
from pgprune_core.model.placement import (
    full_state_dict,
    has_offloaded_weights,
    input_device,
    onloaded,
)
from pgprune_core.model.structure import ModelStructure, UnitLayout
from pgprune_core.model.surgery import load_pruned, prune_model, save_pruned
from pgprune_core.plugin.registry import get_registry
from pgprune_core.run.pipeline import run_pipeline
from pgprune_core.testing import save_run_assets

KINDS = ("channel", "head", "layer")
TOL = 1e-5


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_run_assets(tmp_path_factory.mktemp("offload"), calib_chars=12000,
                           eval_chars=6000)


def model_bytes(path: Path) -> int:
    return (path / "model.safetensors").stat().st_size


def offload_options(assets: dict[str, Path]) -> dict[str, Any]:
    """A CPU budget of 40% of the weights: the embeddings and a layer or two stay in
    memory, the other layers and the head go to disk."""
    return {"device_map": "auto", "max_memory": {"cpu": int(0.4 * model_bytes(assets["model"]))},
            "offload_folder": str(assets["root"] / "offload")}


@dataclass
class Loaded:
    loaded: LoadedModel
    structure: ModelStructure
    granularities: dict[str, Any]
    layout: UnitLayout

    @property
    def model(self) -> Any:
        return self.loaded.model

    def restrict(self, kinds: tuple[str, ...]) -> tuple[UnitLayout, dict[str, Any]]:
        return (UnitLayout([self.layout[k] for k in kinds]),
                {k: self.granularities[k] for k in kinds})


def load(assets: dict[str, Path], **options: Any) -> Loaded:
    registry = get_registry()
    adapter = registry.cls("adapter", "llama")()
    loaded = adapter.load(ModelSource(name_or_path=str(assets["model"]), **options))
    structure = adapter.describe_model(loaded.model)
    granularities = {kind: registry.cls("granularity", kind)() for kind in KINDS}
    layout = UnitLayout([g.units(structure) for g in granularities.values()])
    return Loaded(loaded, structure, granularities, layout)


@pytest.fixture(scope="module")
def pair(assets: dict[str, Path]) -> tuple[Loaded, Loaded]:
    """(loaded whole, offloaded); neither is cut (tests that cut load their own)."""
    return load(assets), load(assets, **offload_options(assets))


def ids(rows: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 320, (rows, length), generator=generator)


def logits(model: Any, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch, use_cache=False).logits


def test_the_offloaded_model_is_split_between_memory_and_disk(pair):
    plain, off = pair
    placement = set(off.model.hf_device_map.values())
    assert placement == {"cpu", "disk"}, off.model.hf_device_map
    assert has_offloaded_weights(off.model) and not has_offloaded_weights(plain.model)
    metas = [name for name, p in off.model.named_parameters() if p.device.type == "meta"]
    assert any(".layers." in name for name in metas)
    assert input_device(off.model) == torch.device("cpu")
    # reading weights outside a forward: the real values for the block, meta again after
    down = off.structure.layers[-1].mlp.down_proj
    with onloaded(down):
        assert torch.equal(down.weight, plain.structure.layers[-1].mlp.down_proj.weight)
    assert down.weight.device.type == "meta"


def test_masked_losses_match_the_model_loaded_whole(pair):
    plain = pair[0]
    generator = torch.Generator().manual_seed(0)
    n = len(plain.layout)
    masks = (torch.rand(4, n, generator=generator) > 0.3).float()
    masks[0] = 1.0  # the dense mask
    batch = ids()
    oracles = [LossOracle(s.model, s.structure, s.layout, s.granularities, max_rows=3)
               for s in pair]
    want, got = (oracle.losses(batch, masks) for oracle in oracles)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    # the dense mask is the plain model's loss
    reference = torch.nn.functional.cross_entropy(
        logits(plain.model, batch)[:, :-1].reshape(-1, 320), batch[:, 1:].reshape(-1))
    torch.testing.assert_close(got[0], reference, atol=TOL, rtol=0)
    # soft masks, differentiable (Gumbel-softmax): the same values and gradients
    soft = torch.rand(2, n, generator=generator)
    grads = []
    for oracle in oracles:
        leaf = soft.clone().requires_grad_(True)
        loss = oracle.loss(batch, leaf)
        loss.sum().backward()
        grads.append((loss.detach(), leaf.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=TOL, rtol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=TOL, rtol=0)


def calibration(n_sequences: int, seq_len: int) -> Any:
    windows = torch.randint(3, 320, (n_sequences, seq_len),
                            generator=torch.Generator().manual_seed(1))
    return iter(windows.split(2))


def scores(setup: Loaded, name: str, kinds: tuple[str, ...]) -> torch.Tensor:
    cls = get_registry().cls("initializer", name)
    options = {} if name == "magnitude" else {"n_sequences": 4, "seq_len": 16, "batch_size": 2}
    layout, granularities = setup.restrict(kinds)
    return cls(cls.Config(**options)).scores(InitContext(
        model=setup.model, structure=setup.structure, layout=layout,
        granularities=granularities, device=input_device(setup.model), seed=0,
        calibration=calibration))


@pytest.mark.parametrize(("name", "kinds"), [("magnitude", KINDS),
                                             ("wanda-sp", ("channel", "head")),
                                             ("layerwise-ppl", ("layer",))])
def test_initializer_scores_match(pair, name, kinds):
    plain, off = pair
    want = scores(plain, name, kinds)
    torch.testing.assert_close(scores(off, name, kinds), want, atol=TOL, rtol=0)
    assert want.std() > 0  # the scores rank something


def test_taylor_refuses_offloaded_weights_in_one_line(pair):
    _, off = pair
    with pytest.raises(ConfigError, match="offloaded") as info:
        scores(off, "taylor", ("channel",))
    assert "\n" not in str(info.value)


def test_cut_offloaded_model_matches_and_saves(assets, tmp_path):
    plain, off = load(assets), load(assets, **offload_options(assets))
    generator = torch.Generator().manual_seed(3)
    keep = torch.rand(len(plain.layout), generator=generator) > 0.4
    parts = plain.layout.split(keep)
    parts["layer"][:] = True
    parts["layer"][1] = False  # a layer dropped
    parts["head"][plain.layout["head"].layer == 3] = False  # a layer left without heads
    keep = plain.layout.join(parts)
    summaries = [prune_model(s.structure, s.layout, s.granularities, keep) for s in (plain, off)]
    assert summaries[0] == summaries[1]
    # the cut weights stay offloaded (module by module, never the whole model in memory)
    assert has_offloaded_weights(off.model)
    batch = ids(seed=1)
    want = logits(plain.model, batch)
    torch.testing.assert_close(logits(off.model, batch), want, atol=TOL, rtol=0)
    # the state dict the hf/decilm exports read holds the real, cut tensors
    state = full_state_dict(off.model)
    assert state.keys() == plain.model.state_dict().keys()
    for key, tensor in plain.model.state_dict().items():
        assert torch.equal(state[key], tensor), key
    save_pruned(off.model, off.loaded.tokenizer, tmp_path / "pruned", adapter_name="llama",
                base_model=str(assets["model"]))
    reloaded = load_pruned(tmp_path / "pruned")
    torch.testing.assert_close(logits(reloaded, batch), want, atol=TOL, rtol=0)


def run_config(assets: dict[str, Path], out: Path, **overrides: Any) -> Any:
    flat = {
        "model.name_or_path": str(assets["model"]),
        "data.calib_file": str(assets["calib"]),
        "data.eval": [],
        "data.eval_files": [str(assets["eval"])],
        "data.seq_len": 16,
        "data.cache_dir": str(assets["root"] / "cache"),
        "pruning.granularity": ["channel", "head"],
        "pruning.prune_rate": 0.4,
        "init.name": "wanda-sp",
        "init.n_sequences": 4,
        "init.seq_len": 16,
        "training.steps": 4,
        "training.batch_size": 2,
        "training.log_every": 1,
        "evaluation.evaluators": ["perplexity", {"name": "efficiency", "repeats": 1,
                                                  "generate_tokens": 0}],
        "evaluation.seq_len": 16,
        "output.dir": str(out),
    }
    flat.update(overrides)
    return resolve_config(None, None, flat)


def log_losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if line.strip()]


def test_run_with_offload_matches_the_run_without(assets, tmp_path):
    options = offload_options(assets)
    plain = run_pipeline(run_config(assets, tmp_path / "plain"))
    off = run_pipeline(run_config(assets, tmp_path / "off", **{
        "model.device_map": options["device_map"],
        "model.max_memory": options["max_memory"],
        "model.offload_folder": options["offload_folder"]}))
    masks = [json.loads((r.run_dir / "masks.json").read_text()) for r in (plain, off)]
    assert masks[0]["kinds"] == masks[1]["kinds"]
    want, got = log_losses(plain.run_dir), log_losses(off.run_dir)
    assert len(want) == 4
    assert got == pytest.approx(want, abs=TOL)
    for side in ("dense", "pruned"):
        assert off.metrics[side]["ppl"] == pytest.approx(plain.metrics[side]["ppl"], rel=TOL)
        assert "cpu" in off.metrics[side]["forward"]["peak_memory_by_device"]
    assert off.metrics["run"]["peak_memory_by_device"]["cpu"] > 0
    batch = ids(seed=2)
    torch.testing.assert_close(logits(load_pruned(off.run_dir / "model"), batch),
                               logits(load_pruned(plain.run_dir / "model"), batch),
                               atol=TOL, rtol=0)


def test_a_taylor_run_on_offloaded_weights_is_refused_before_any_work(assets, tmp_path):
    options = offload_options(assets)
    config = run_config(assets, tmp_path / "run", **{
        "init.name": "taylor", "model.device_map": "auto",
        "model.max_memory": options["max_memory"]})
    with pytest.raises(ConfigError, match="initializer 'taylor' needs gradients"):
        run_pipeline(config)
    assert not (tmp_path / "run").exists()  # nothing measured, nothing left behind


def test_offload_options_need_a_device_map(assets, tmp_path):
    config = run_config(assets, tmp_path / "run", **{"model.max_memory": "cpu=200MB"})
    assert config.model.max_memory == {"cpu": "200MB"}
    with pytest.raises(ConfigError, match=r"needs model\.device_map"):
        run_pipeline(config)
    assert not (tmp_path / "run").exists()  # refused before anything was created
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    config = run_config(assets, tmp_path / "run", **{
        "model.device_map": "auto", "model.max_memory": f"cuda:{gpus}=1GiB,cpu=2GiB"})
    with pytest.raises(ConfigError, match=f"names cuda:{gpus}, but this machine has {gpus} CUDA"):
        run_pipeline(config)
    with pytest.raises(ModelError, match="need a device_map"):
        load(assets, offload_folder=str(tmp_path / "offload"))


def test_the_layer_swap_keeps_the_offloaded_layer_working(pair):
    """A masked layer stands in for an offloaded one; the original still onloads its own
    weights (its hook) and the rows whose layer is kept equal the unmasked model's."""
    _, off = pair
    layer_units = off.layout["layer"]
    granularity = LayerGranularity()
    last = off.structure.layers[-1].module
    assert has_offloaded_weights(last)
    masks = torch.ones(2, len(layer_units))
    masks[1, -1] = 0.0  # row 1 skips the last (offloaded) layer
    batch = ids(rows=2)
    dense = logits(off.model, batch)
    handles = granularity.install(off.structure, layer_units, masks)
    try:
        masked = logits(off.model, batch)
    finally:
        for handle in handles:
            handle.remove()
    assert off.structure.layer_list[-1] is last
    torch.testing.assert_close(masked[0], dense[0], atol=TOL, rtol=0)
    assert not torch.allclose(masked[1], dense[1], atol=1e-3)


def test_routed_experts_of_an_offloaded_moe_model_mask_and_cut_alike(tmp_path):
    """Mixtral's fused expert tensors are rewritten at load, so its disk offload goes through
    the offload folder; masked routing and the expert cut give the whole model's numbers."""
    from pgprune_core.testing.moe import save_tiny_moe_model

    path = save_tiny_moe_model(tmp_path / "moe", "mixtral")
    assets = {"model": path, "root": tmp_path}
    registry = get_registry()
    adapter = registry.cls("adapter", "mixtral")()
    setups = []
    for options in ({}, offload_options(assets)):
        model = adapter.load(ModelSource(name_or_path=str(path), **options)).model
        structure = adapter.describe_model(model)
        granularities = {k: registry.cls("granularity", k)() for k in ("expert", "head")}
        layout = UnitLayout([g.units(structure) for g in granularities.values()])
        setups.append((model, structure, granularities, layout))
    plain, off = setups
    assert has_offloaded_weights(off[0]) and any((tmp_path / "offload").iterdir())
    masks = (torch.rand(3, len(plain[3]), generator=torch.Generator().manual_seed(0)) > 0.3)
    batch = ids(seed=4)
    want, got = (LossOracle(m, s, lay, g).losses(batch, masks.float()) for m, s, g, lay in setups)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    keep = torch.ones(len(plain[3]), dtype=torch.bool)
    experts = plain[3].offsets["expert"].start
    keep[experts + torch.tensor([0, 1, 2, 9, 10])] = False  # 3 of layer 0's 8, 2 of layer 1's
    for _, structure, granularities, layout in setups:
        prune_model(structure, layout, granularities, keep)
    assert [s.experts.n_experts for s in off[1].layers] == [5, 6]
    torch.testing.assert_close(logits(off[0], batch), logits(plain[0], batch), atol=TOL, rtol=0)
