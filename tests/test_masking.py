"""apply_masks and the LossOracle: batched per-mask losses, chunking, soft masks, clean-up."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pgprune_core.model import masking
from pgprune_core.model.masking import LossOracle, apply_masks, token_nll_sums

from .conftest import ALL_KINDS


def _reference_loss(setup, batch, mask):
    """One mask, one plain forward, torch's own cross-entropy."""
    rows = mask.float().expand(batch.shape[0], -1)
    with torch.no_grad(), apply_masks(setup.structure, setup.layout, setup.granularities, rows):
        logits = setup.model(batch, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@pytest.mark.parametrize("arch", ["llama", "llama3", "mistral"])
def test_losses_equal_one_forward_per_mask(make_setup, arch):
    setup = make_setup(arch)
    batch = setup.ids(rows=3, length=10)
    masks = torch.stack([setup.keep(seed=s, drop_layers=[s % 4]) for s in range(3)]
                        + [torch.ones(len(setup.layout), dtype=torch.bool)]).float()
    oracle = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities)
    losses = oracle.losses(batch, masks)
    expected = torch.stack([_reference_loss(setup, batch, m) for m in masks])
    assert losses.shape == (4,)
    assert (losses - expected).abs().max() <= 1e-5
    assert len(set(losses.tolist())) == 4  # mask-major rows: each mask got its own loss
    assert torch.equal(oracle.losses(batch, masks.bool()), losses)  # sampled 0/1 masks as bool


def test_all_ones_mask_gives_the_dense_loss(make_setup):
    setup = make_setup("llama3")
    batch = setup.ids(rows=2, length=16)
    oracle = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities)
    with torch.no_grad():
        logits = setup.model(batch, use_cache=False).logits
    dense = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    assert abs(float(oracle.losses(batch, torch.ones(1, len(setup.layout)))[0]) - float(dense)) <= 1e-5


def test_max_rows_splits_the_forward_without_changing_losses(make_setup):
    setup = make_setup("llama")
    batch = setup.ids(rows=2)
    masks = torch.stack([setup.keep(seed=s) for s in range(3)]).float()
    whole = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities)
    chunked = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities, max_rows=3)
    seen: list[int] = []
    hook = setup.model.model.embed_tokens.register_forward_hook(
        lambda m, args, out: seen.append(out.shape[0]))
    result = chunked.losses(batch, masks)
    hook.remove()
    assert seen == [3, 3]  # 6 rows in chunks of 3, cutting through mask 1's rows
    assert (result - whole.losses(batch, masks)).abs().max() <= 1e-5


def test_counters(make_setup):
    setup = make_setup("llama", kinds=("channel",))
    oracle = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities)
    batch = setup.ids(rows=2)
    oracle.losses(batch, torch.ones(3, len(setup.layout)))
    oracle.loss(batch, torch.ones(2, len(setup.layout), requires_grad=True))
    oracle.count_backward()
    assert (oracle.forward_passes, oracle.rows_evaluated, oracle.backward_passes) == (5, 10, 1)


def test_losses_run_without_autograd(make_setup):
    setup = make_setup("llama", kinds=("head",))
    oracle = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities)
    masks = torch.full((2, len(setup.layout)), 0.5, requires_grad=True)
    losses = oracle.losses(setup.ids(), masks)
    assert not losses.requires_grad and losses.is_inference()


@pytest.mark.parametrize("arch", ["llama", "llama3"])
def test_soft_masks_get_gradients_and_the_weights_do_not(make_setup, arch):
    setup = make_setup(arch)
    oracle = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities)
    batch = setup.ids(rows=2, length=10)
    soft = torch.full((2, len(setup.layout)), 0.7, dtype=torch.float64, requires_grad=True)
    losses = oracle.loss(batch, soft)
    losses.sum().backward()
    assert all(not p.requires_grad and p.grad is None for p in setup.model.parameters())
    for kind, grad in setup.layout.split(soft.grad).items():
        assert grad.abs().sum() > 0, kind
    # the gradient is the derivative of the loss: check it against finite differences
    row = 0
    for kind in ALL_KINDS:
        unit = setup.layout.offsets[kind].start + 1
        step = torch.zeros_like(soft)
        step[row, unit] = 1e-2
        with torch.no_grad():
            plus = oracle.losses(batch, soft + step)[row]
            minus = oracle.losses(batch, soft - step)[row]
        numeric = float(plus - minus) / 2e-2
        assert numeric == pytest.approx(float(soft.grad[row, unit]), rel=0.05, abs=1e-4), kind


def test_masks_are_removed_on_exit_and_on_error(make_setup):
    setup = make_setup("llama")
    layer_list = setup.structure.layer_list
    original = list(layer_list)
    masks = torch.stack([setup.keep(seed=1, drop_layers=[0, 2])] * 2).float()
    with pytest.raises(RuntimeError, match="inside"), \
            apply_masks(setup.structure, setup.layout, setup.granularities, masks):
        assert list(layer_list) != original
        raise RuntimeError("inside")
    assert list(layer_list) == original
    for module in setup.model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_masking_copies_no_weight(make_setup):
    setup = make_setup("llama3")
    before = {name: p.data_ptr() for name, p in setup.model.named_parameters()}
    masks = torch.stack([setup.keep(seed=s) for s in range(2)]).float()
    oracle = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities)
    oracle.losses(setup.ids(), masks)
    assert {name: p.data_ptr() for name, p in setup.model.named_parameters()} == before


def test_token_nll_sums_match_cross_entropy_also_in_chunks(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 11, generator=generator)
    tokens = torch.randint(0, 11, (5, 7), generator=generator)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1),
                               reduction="none").view(5, 6).sum(1)
    assert torch.allclose(token_nll_sums(logits, tokens), expected, atol=1e-5)
    monkeypatch.setattr(masking, "_CE_CHUNK_ELEMENTS", 100)  # two rows per chunk
    assert torch.allclose(token_nll_sums(logits, tokens), expected, atol=1e-5)
    half = logits.to(torch.bfloat16)
    reference = F.cross_entropy(half.float()[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1),
                                reduction="none").view(5, 6).sum(1)
    assert torch.allclose(token_nll_sums(half, tokens), reference, atol=1e-4)


def test_bad_shapes_are_refused(make_setup):
    setup = make_setup("llama", kinds=("channel",))
    oracle = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities)
    with pytest.raises(ValueError, match="masks must be"):
        oracle.losses(setup.ids(), torch.ones(2, 3))
    with pytest.raises(ValueError, match="batch must be"):
        oracle.losses(torch.ones(4, dtype=torch.long), torch.ones(1, len(setup.layout)))
    with pytest.raises(ValueError, match="row_masks must be"), \
            apply_masks(setup.structure, setup.layout, setup.granularities, torch.ones(2, 5)):
        pass


def _reference_kl(setup, batch, mask):
    """One mask, plain forwards of the dense and the masked model, torch's own KL."""
    with torch.no_grad():
        dense = F.log_softmax(setup.model(batch, use_cache=False).logits[:, :-1], dim=-1)
    rows = mask.float().expand(batch.shape[0], -1)
    with torch.no_grad(), apply_masks(setup.structure, setup.layout, setup.granularities, rows):
        masked = F.log_softmax(setup.model(batch, use_cache=False).logits[:, :-1], dim=-1)
    vocab = dense.shape[-1]
    # kl_div(input=log q, target=log p, log_target) = sum p (log p - log q); mean over tokens
    return F.kl_div(masked.reshape(-1, vocab), dense.reshape(-1, vocab), log_target=True,
                    reduction="batchmean")


@pytest.mark.parametrize("max_rows", [None, 3])
def test_kl_objective_equals_the_divergence_from_the_dense_model(make_setup, max_rows):
    setup = make_setup("llama3")
    batch = setup.ids(rows=2, length=12)
    masks = torch.stack([torch.ones(len(setup.layout), dtype=torch.bool)]
                        + [setup.keep(seed=s, drop_layers=[s % 4]) for s in range(3)]).float()
    oracle = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities,
                        max_rows=max_rows, objective="kl")
    losses = oracle.losses(batch, masks)
    expected = torch.stack([_reference_kl(setup, batch, m) for m in masks])
    assert abs(float(losses[0])) <= 1e-6  # the dense mask diverges from nothing
    assert (losses - expected).abs().max() <= 1e-5
    assert (losses[1:] > 1e-4).all()
    # the dense distribution is one more forward of the batch, counted
    assert oracle.forward_passes == 4 + 1


def test_kl_objective_is_differentiable_in_soft_masks(make_setup):
    setup = make_setup("llama")
    batch = setup.ids(rows=2, length=8)
    soft = torch.full((2, len(setup.layout)), 0.7, requires_grad=True)
    oracle = LossOracle(setup.model, setup.structure, setup.layout, setup.granularities,
                        objective="kl")
    loss = oracle.loss(batch, soft).sum()
    loss.backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert torch.allclose(oracle.losses(batch, soft.detach()), oracle.loss(batch, soft).detach(),
                          atol=1e-6)


def test_unknown_objective_is_refused(make_setup):
    setup = make_setup("llama")
    with pytest.raises(ValueError, match="unknown objective 'mse'"):
        LossOracle(setup.model, setup.structure, setup.layout, setup.granularities, objective="mse")
