"""The ``expert`` granularity on tiny Mixtral / Qwen2-MoE / Qwen3-MoE models: masked routing
(per row), surgery, accounting, save / load, generation, the top-k floor of the budget and
the ``expert-frequency`` initializer against a brute-force count."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from pgprune_core import load_pruned
from pgprune_core.errors import ConfigError, ExportError, ModelError
from pgprune_core.interfaces import InitContext
from pgprune_core.model.accounting import removed_params
from pgprune_core.model.export import export_pruned
from pgprune_core.model.masking import LossOracle, apply_masks
from pgprune_core.model.structure import UnitLayout
from pgprune_core.model.surgery import prune_model, save_pruned
from pgprune_core.optim.budget import Budget
from pgprune_core.testing import tiny_tokenizer
from pgprune_core.testing.moe import MOE_ARCHS, tiny_moe_model

ARCHS = list(MOE_ARCHS)
N_EXPERTS, TOP_K = 8, 2


def _setup(registry, arch, kinds=("expert",), **kwargs):
    model = tiny_moe_model(arch, **kwargs)
    adapter = registry.cls("adapter", arch)()
    structure = adapter.describe_model(model)
    granularities = {kind: registry.cls("granularity", kind)() for kind in kinds}
    layout = UnitLayout([g.units(structure) for g in granularities.values()])
    return model, adapter, structure, granularities, layout


def _ids(rows=3, length=10, seed=0):
    return torch.randint(3, 300, (rows, length), generator=torch.Generator().manual_seed(seed))


def _random_keep(layout, seed, rate=0.5):
    """A keep vector over the expert units keeping at least TOP_K experts per layer."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(len(layout), generator=generator) > rate
    experts = layout["expert"]
    offset = layout.offsets["expert"].start
    for layer in experts.layer.unique().tolist():
        cols = offset + torch.nonzero(experts.layer == layer).flatten()
        chosen = cols[torch.randperm(cols.numel(), generator=generator)[:TOP_K]]
        keep[chosen] = True
    return keep


def test_units_one_per_expert_with_its_parameters(registry):
    model, _, structure, _, layout = _setup(registry, "mixtral")
    units = layout["expert"]
    assert len(units) == 2 * N_EXPERTS
    assert units.min_kept == {0: TOP_K, 1: TOP_K}
    experts = model.model.layers[0].mlp.experts
    per_expert = (experts.gate_up_proj[0].numel() + experts.down_proj[0].numel()
                  + model.config.hidden_size)  # + the router row
    assert units.cost.tolist() == [per_expert] * (2 * N_EXPERTS)
    assert structure.layers[0].mlp is None  # Mixtral has no dense MLP


@pytest.mark.parametrize("arch", ARCHS)
def test_all_ones_masks_give_the_dense_logits(registry, arch):
    model, _, structure, granularities, layout = _setup(registry, arch)
    ids = _ids()
    dense = model(ids).logits
    with apply_masks(structure, layout, granularities, torch.ones(3, len(layout))):
        masked = model(ids).logits
    torch.testing.assert_close(masked, dense, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_surgery_gives_the_masked_logits_row_by_row(registry, arch):
    """One batched forward, a different expert mask per row; each row equals the model cut
    with that row's mask, and accounting counts what surgery removes."""
    model, adapter, structure, granularities, layout = _setup(registry, arch)
    ids = _ids()
    keeps = torch.stack([_random_keep(layout, seed) for seed in range(3)])
    assert len({tuple(k.tolist()) for k in keeps}) == 3
    dense = model(ids).logits
    with apply_masks(structure, layout, granularities, keeps.float()):
        masked = model(ids).logits
    for row in range(3):
        assert (masked[row] - dense[row]).abs().max() > 1e-3  # the mask matters
        cut = copy.deepcopy(model)
        cut_structure = adapter.describe_model(cut)
        summary = prune_model(cut_structure, layout, granularities, keeps[row])
        assert summary["params_removed"] == removed_params(layout, keeps[row])
        counts = [site.experts.n_experts for site in cut_structure.layers]
        assert counts == [int(keeps[row][layer * N_EXPERTS:(layer + 1) * N_EXPERTS].sum())
                          for layer in range(2)]
        torch.testing.assert_close(cut(ids[row:row + 1]).logits[0], masked[row],
                                   rtol=0, atol=1e-4)


def test_masked_routing_renormalises_as_the_router_does(registry):
    """Qwen with norm_topk_prob=False does not renormalise: the masked forward must not
    either (the weights of the kept top-k over a softmax of the kept experts)."""
    for norm in (False, True):
        model, adapter, structure, granularities, layout = _setup(
            registry, "qwen2_moe", norm_topk_prob=norm)
        assert structure.layers[0].experts.renormalise is norm
        keep = _random_keep(layout, 7)
        ids = _ids(rows=1)
        with apply_masks(structure, layout, granularities, keep.float()[None]):
            masked = model(ids).logits
        cut = copy.deepcopy(model)
        prune_model(adapter.describe_model(cut), layout, granularities, keep)
        torch.testing.assert_close(cut(ids).logits, masked, rtol=0, atol=1e-4)


def test_a_row_with_fewer_than_top_k_experts_is_finite(registry):
    """Sampled masks may keep fewer than top-k experts (or none) of a layer."""
    model, _, structure, granularities, layout = _setup(registry, "mixtral")
    masks = torch.ones(3, len(layout))
    masks[0, :N_EXPERTS - 1] = 0  # one expert left in layer 0
    masks[1, :N_EXPERTS] = 0  # none left in layer 0
    masks[2, N_EXPERTS:] = 0  # none left in layer 1
    with apply_masks(structure, layout, granularities, masks):
        logits = model(_ids()).logits
    assert torch.isfinite(logits).all()


def test_soft_masks_are_differentiable(registry):
    model, _, structure, granularities, layout = _setup(registry, "qwen3_moe")
    oracle = LossOracle(model, structure, layout, granularities)
    soft = torch.full((2, len(layout)), 0.7, requires_grad=True)
    oracle.loss(_ids(rows=2), soft).sum().backward()
    assert soft.grad is not None and torch.isfinite(soft.grad).all() and soft.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_model_loads_both_ways_and_generates(registry, arch, tmp_path):
    model, adapter, structure, granularities, layout = _setup(registry, arch, kinds=("expert", "head"))
    keep = _random_keep(layout, 3)
    prune_model(structure, layout, granularities, keep)
    tokenizer = tiny_tokenizer(model.config.vocab_size)
    path = save_pruned(model, tokenizer, tmp_path / "pruned", adapter_name=arch, base_model="tiny")
    section = json.loads((path / "config.json").read_text())["pgprune"]
    assert [s["n_experts"] for s in section["layers"]] == [s.experts.n_experts for s in structure.layers]
    ids = _ids(rows=2, length=6)
    expected = model(ids).logits
    greedy = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    for reloaded in (load_pruned(path),
                     AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)):
        assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=0, atol=1e-5)
        assert torch.equal(reloaded.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True),
                           greedy)
    # a reloaded model is described with its pruned expert counts and prunes further
    again = adapter.describe_model(load_pruned(path))
    assert [s.experts.n_experts for s in again.layers] == [s.experts.n_experts for s in structure.layers]


def test_layers_and_experts_together(registry, tmp_path):
    model, _, structure, granularities, layout = _setup(
        registry, "qwen2_moe", kinds=("expert", "channel", "layer"), num_hidden_layers=3)
    parts = layout.split(_random_keep(layout, 5))
    parts["layer"][:] = True
    parts["layer"][1] = False
    keep = layout.join(parts)
    before = sum(p.numel() for p in model.parameters())
    prune_model(structure, layout, granularities, keep)
    assert before - sum(p.numel() for p in model.parameters()) == removed_params(layout, keep)
    path = save_pruned(model, None, tmp_path / "pruned", adapter_name="qwen2_moe", base_model="tiny")
    ids = _ids(rows=1)
    torch.testing.assert_close(load_pruned(path)(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_experts_heads_and_layers_masked_per_row_equal_the_cut_model(registry):
    """With the layer kind computing only the rows whose layer is kept, the expert hooks
    inside a layer must pick the same rows of their masks."""
    model, adapter, structure, granularities, layout = _setup(
        registry, "mixtral", kinds=("expert", "head", "layer"), num_hidden_layers=3)
    ids = _ids()
    keeps = []
    for seed in range(3):
        parts = layout.split(_random_keep(layout, 10 + seed))
        parts["layer"][:] = True
        parts["layer"][seed] = seed != 1  # row 1 drops layer 1
        keeps.append(layout.join(parts))
    keeps = torch.stack(keeps)
    with apply_masks(structure, layout, granularities, keeps.float()):
        masked = model(ids).logits
    for row in range(3):
        cut = copy.deepcopy(model)
        prune_model(adapter.describe_model(cut), layout, granularities, keeps[row])
        torch.testing.assert_close(cut(ids[row:row + 1]).logits[0], masked[row],
                                   rtol=0, atol=1e-4)


def test_protected_layers_keep_their_experts_and_the_rest_keep_top_k(registry):
    from pgprune_core.optim.budget import protected_mask

    _, _, _, _, layout = _setup(registry, "mixtral", num_hidden_layers=3)
    protected = protected_mask(layout, 3, 1, 0)
    budget = Budget("per-type", layout, 0.5, protected)
    keep = budget.final_mask(torch.arange(len(layout), dtype=torch.float64).flip(0))
    per_layer = keep.view(3, N_EXPERTS).sum(dim=1).tolist()
    assert per_layer[0] == N_EXPERTS and min(per_layer[1:]) >= TOP_K
    assert int((~keep).sum()) == round(0.5 * 3 * N_EXPERTS)


def test_surgery_refuses_fewer_than_top_k_experts(registry):
    _, _, structure, granularities, layout = _setup(registry, "mixtral")
    keep = torch.ones(len(layout), dtype=torch.bool)
    keep[:N_EXPERTS - 1] = False
    with pytest.raises(ModelError, match="fewer than the router's top-k"):
        prune_model(structure, layout, granularities, keep)


@pytest.mark.parametrize("mode", ["per-type", "local", "params", "global"])
def test_the_final_mask_keeps_top_k_experts_per_layer(registry, mode):
    _, _, _, _, layout = _setup(registry, "mixtral")
    budget = Budget(mode, layout, 0.6)
    # scores that favour layer 1 so much that a plain ranking would empty layer 0
    scores = torch.cat([torch.linspace(0, 0.1, N_EXPERTS), torch.linspace(1, 2, N_EXPERTS)])
    keep = budget.final_mask(scores)
    per_layer = keep.view(2, N_EXPERTS).sum(dim=1)
    assert (per_layer >= TOP_K).all()
    assert int((~keep).sum()) == round(0.6 * 2 * N_EXPERTS)
    if mode != "local":
        assert per_layer.tolist() == [TOP_K, 2 * N_EXPERTS - round(0.6 * 2 * N_EXPERTS) - TOP_K]


def test_a_rate_that_leaves_fewer_than_top_k_experts_is_refused(registry):
    _, _, _, _, layout = _setup(registry, "mixtral")
    for mode in ("per-type", "local"):
        with pytest.raises(ConfigError, match="keep at least 2 of its expert units"):
            Budget(mode, layout, 0.8)  # 8 experts per layer, 2 must stay: at most 75 %
    Budget("per-type", layout, 0.75)


def test_hf_and_decilm_exports_are_refused(registry, tmp_path):
    model, *_ = _setup(registry, "mixtral")
    for fmt in ("hf", "decilm"):
        with pytest.raises(ExportError, match="mixture-of-experts"):
            export_pruned(model, None, tmp_path / fmt, fmt, adapter_name="mixtral", base_model="x")


def test_expert_granularity_needs_a_sparse_model(registry):
    from pgprune_core.testing import tiny_model

    adapter = registry.cls("adapter", "llama")()
    structure = adapter.describe_model(tiny_model("llama", num_hidden_layers=2))
    with pytest.raises(ModelError, match="no mixture-of-experts layers"):
        registry.cls("granularity", "expert")().units(structure)


# -- the expert-frequency initializer -----------------------------------------------------


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_expert_frequency_matches_a_brute_force_count(registry, arch):
    model, _, structure, granularities, layout = _setup(registry, arch)
    windows = _ids(rows=4, length=12, seed=3)

    def calibration(n_sequences, seq_len):
        assert (n_sequences, seq_len) == (4, 12)
        return iter([windows[:2], windows[2:]])

    ctx = InitContext(model=model, structure=structure, layout=layout, granularities=granularities,
                      device=torch.device("cpu"), seed=0, calibration=calibration)
    cls = registry.cls("initializer", "expert-frequency")
    scores = cls(cls.Config(n_sequences=4, seq_len=12, batch_size=3)).scores(ctx)

    # brute force: each layer's router input, softmax, top-k, (re)normalise, count
    inputs = {}
    hooks = [site.experts.module.register_forward_pre_hook(
        lambda m, args, i=site.index: inputs.__setitem__(i, args[0].reshape(-1, args[0].shape[-1])))
        for site in structure.layers]
    with torch.no_grad():
        model(windows)
    for hook in hooks:
        hook.remove()
    expected = []
    for site in structure.layers:
        router = site.experts.router
        probs = torch.softmax(inputs[site.index] @ router.weight.detach().T, dim=-1)
        tokens = probs.shape[0]
        for e in range(N_EXPERTS):
            freq = weight_sum = 0.0
            for t in range(tokens):
                top = torch.topk(probs[t], TOP_K)
                if e in top.indices.tolist():
                    w = float(probs[t, e])
                    if site.experts.renormalise:
                        w /= float(top.values.sum())
                    freq += 1
                    weight_sum += w
            mean_weight = weight_sum / freq if freq else 0.0
            expected.append(freq / tokens * mean_weight)
    torch.testing.assert_close(scores, torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)
    assert scores.sum() > 0


def test_expert_frequency_scores_experts_only(registry):
    model, _, structure, granularities, layout = _setup(registry, "mixtral", kinds=("expert", "head"))
    ctx = InitContext(model=model, structure=structure, layout=layout, granularities=granularities,
                      device=torch.device("cpu"), seed=0, calibration=lambda n, t: iter([]))
    with pytest.raises(ConfigError, match="cannot score head"):
        registry.cls("initializer", "expert-frequency")().scores(ctx)


# -- pgprune run / resume end to end ------------------------------------------------------


@pytest.fixture(scope="module")
def moe_assets(tmp_path_factory):
    from pgprune_core.testing import sample_text
    from pgprune_core.testing.moe import save_tiny_moe_model

    root = tmp_path_factory.mktemp("moe")
    save_tiny_moe_model(root / "model", "qwen3_moe")
    (root / "calib.txt").write_text(sample_text(12000))
    (root / "heldout.txt").write_text(sample_text(18000)[12000:])
    return root


def _run_args(root, out, *extra):
    return ["run", "--model", str(root / "model"), "--calib-file", str(root / "calib.txt"),
            "--eval-file", str(root / "heldout.txt"), "--data.eval", "[]", "--seq-len", "16",
            "--steps", "6", "--batch-size", "2", "--granularity", "expert",
            "--prune-rate", "0.5", "--out", str(out),
            "--training.checkpoint_every", "2", "--training.log_every", "1",
            "--evaluator", "perplexity", "--evaluation.seq_len", "16",
            "--data.cache_dir", str(root / "cache"), *extra]


@pytest.mark.slow
def test_pgprune_run_and_resume_prune_experts(moe_assets, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pgprune_core.cli import build_app

    runner = CliRunner()
    init = ["--init", "expert-frequency", "--init.n_sequences", "4", "--init.seq_len", "16",
            "--estimator.lr", "0.05", "--estimator.scale_lr_to_steps", "false"]
    reference = tmp_path / "reference"
    result = runner.invoke(build_app(), _run_args(moe_assets, reference, *init))
    assert result.exit_code == 0, result.output
    masks = json.loads((reference / "masks.json").read_text())
    keep = masks["kinds"]["expert"]["keep"]
    assert sum(keep) == len(keep) // 2
    assert all(sum(keep[layer * N_EXPERTS:(layer + 1) * N_EXPERTS]) >= TOP_K for layer in range(2))
    metrics = json.loads((reference / "metrics.json").read_text())
    model = load_pruned(reference / "model")
    assert sum(p.numel() for p in model.parameters()) == metrics["pruned"]["params"]
    assert metrics["pruned"]["params"] < metrics["dense"]["params"]

    # interrupted after the fourth step's losses, then resumed: the same masks
    real, calls = LossOracle.losses, []

    def interrupt(self, batch, masks):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, batch, masks)

    monkeypatch.setattr(LossOracle, "losses", interrupt)
    out = tmp_path / "interrupted"
    result = runner.invoke(build_app(), _run_args(moe_assets, out, *init))
    assert result.exit_code == 130, result.output
    assert not (out / "metrics.json").exists()
    monkeypatch.undo()
    result = runner.invoke(build_app(), ["resume", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "masks.json").read_text()) == masks


def test_pgprune_run_refuses_a_rate_below_top_k_before_optimising(moe_assets, tmp_path):
    from typer.testing import CliRunner

    from pgprune_core.cli import build_app

    args = _run_args(moe_assets, tmp_path / "run", "--init", "random")
    args[args.index("--prune-rate") + 1] = "0.9"
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if "top-k" in line]
    assert len(errors) == 1 and "cannot prune 90.0% of 'expert' units" in errors[0]
    assert not (tmp_path / "run").exists()  # a set-up mistake leaves no run directory


def test_baseline_without_estimator_prunes_by_expert_frequency(moe_assets, tmp_path):
    from typer.testing import CliRunner

    from pgprune_core.cli import build_app

    out = tmp_path / "none"
    args = _run_args(moe_assets, out, "--estimator", "none", "--init", "expert-frequency",
                     "--init.n_sequences", "4", "--init.seq_len", "16")
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    scores = torch.load(out / "init_scores.pt", weights_only=True)
    keep = json.loads((out / "masks.json").read_text())["kinds"]["expert"]["keep"]
    kept = torch.tensor(keep, dtype=torch.bool)
    # per-type budget: the half of the experts of highest frequency score stay
    assert int(kept.sum()) == N_EXPERTS and scores[kept].min() >= scores[~kept].max()


@pytest.mark.slow
def test_pgprune_compare_grids_expert_pruning(moe_assets, tmp_path):
    import csv

    from typer.testing import CliRunner

    from pgprune_core.cli import build_app

    out = tmp_path / "compare"
    args = ["compare", "--model", str(moe_assets / "model"), "--calib-file",
            str(moe_assets / "calib.txt"), "--eval-file", str(moe_assets / "heldout.txt"),
            "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--evaluator", "perplexity",
            "--init", "expert-frequency", "--estimator", "reinforce", "--estimator", "none",
            "--rates", "0.5", "--granularity", "expert", "--in-process", "--out", str(out),
            "--data.eval", "[]", "--data.cache_dir", str(moe_assets / "cache"),
            "--evaluation.seq_len", "16", "--output.save_model", "false"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    with (out / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["estimator"] for row in rows) == ["none", "reinforce"]
