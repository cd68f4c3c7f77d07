"""The built-in initializers against slow, obviously-correct references on tiny models.

Each metric is recomputed here the long way (explicit loops over tokens, units and
parameter slices; an independent full-model forward instead of the layer-by-layer pass;
a model copy with the layer deleted instead of the oracle's identity mask; autograd on
the whole calibration set at once) and must agree with the implementation.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator

import pytest
import torch
from pydantic import ValidationError

from pgprune_core.errors import ConfigError, DataError
from pgprune_core.initializers.transforms import sigmoid_norm
from pgprune_core.initializers.unit_params import layer_unit_sums
from pgprune_core.interfaces import InitContext
from pgprune_core.model.masking import LossOracle
from pgprune_core.plugin.registry import get_registry

N_SEQ, SEQ_LEN = 6, 24


def calibration_windows(vocab: int = 320, n: int = 16, length: int = 40) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(3, vocab, (n, length), generator=generator)


def make_calibration(windows: torch.Tensor, batch: int = 4):
    """An ``InitContext.calibration``: fresh deterministic batches of the first n windows."""

    def calibration(n_sequences: int, seq_len: int) -> Iterator[torch.Tensor]:
        chosen = windows[:n_sequences, :seq_len]
        return iter(list(chosen.split(batch)))

    return calibration


def make_ctx(setup, *, seed: int = 0, calibration: bool = True) -> InitContext:
    """An initializer's context for a tiny model prepared by the ``make_setup`` fixture."""
    return InitContext(
        model=setup.model, structure=setup.structure, layout=setup.layout,
        granularities=setup.granularities, device=torch.device("cpu"), seed=seed,
        calibration=make_calibration(calibration_windows()) if calibration else None,
        oracle=LossOracle(setup.model, setup.structure, setup.layout, setup.granularities),
    )


def scores_of(name: str, ctx: InitContext, **options) -> torch.Tensor:
    cls = get_registry().cls("initializer", name)
    return cls(cls.Config(**options)).scores(ctx)


# -- the parameters each unit owns, spelled out per unit --------------------------------
# ``value(param)`` is a tensor of the parameter's shape (the weights, or w * dL/dw); each
# function returns the unit's entries of it, slice by slice.


def channel_entries(layer, j: int, value) -> list[torch.Tensor]:
    mlp = layer.mlp
    entries = [value(mlp.gate_proj.weight)[j], value(mlp.up_proj.weight)[j],
               value(mlp.down_proj.weight)[:, j]]
    entries += [value(lin.bias)[j:j + 1] for lin in (mlp.gate_proj, mlp.up_proj)
                if lin.bias is not None]
    return entries


def group_entries(layer, g: int, n_heads: int, n_kv: int, head_dim: int, value) -> list[torch.Tensor]:
    att = layer.self_attn
    size = n_heads // n_kv
    q_rows = slice(g * size * head_dim, (g + 1) * size * head_dim)
    kv_rows = slice(g * head_dim, (g + 1) * head_dim)
    entries = [value(att.q_proj.weight)[q_rows], value(att.k_proj.weight)[kv_rows],
               value(att.v_proj.weight)[kv_rows], value(att.o_proj.weight)[:, q_rows]]
    for lin, rows in ((att.q_proj, q_rows), (att.k_proj, kv_rows), (att.v_proj, kv_rows)):
        if lin.bias is not None:
            entries.append(value(lin.bias)[rows])
    return entries


def unit_entries(model, kind: str, layer_index: int, unit: int, value=None) -> list[torch.Tensor]:
    value = value or (lambda p: p.detach().double())
    config = model.config
    layer = model.model.layers[layer_index]
    if kind == "channel":
        return channel_entries(layer, unit, value)
    if kind == "head":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return group_entries(layer, unit, config.num_attention_heads, config.num_key_value_heads,
                             head_dim, value)
    return [value(p) for p in layer.parameters()]


# -- magnitude --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "llama3"])
def test_magnitude_is_the_rms_of_each_units_own_weights(make_setup, arch):
    setup = make_setup(arch, attention_bias=True, mlp_bias=True)
    model, ctx = setup.model, make_ctx(setup, calibration=False)
    scores = scores_of("magnitude", ctx)
    expected = []
    for unit_set in ctx.layout:
        for layer, index in zip(unit_set.layer.tolist(), unit_set.index.tolist(), strict=True):
            flat = torch.cat([e.flatten() for e in unit_entries(model, unit_set.kind, layer, index)])
            expected.append(math.sqrt(float((flat**2).sum()) / flat.numel()))
    assert torch.allclose(scores, torch.tensor(expected, dtype=torch.float64), rtol=1e-5)


@pytest.mark.parametrize("kind", ["channel", "head", "layer"])
def test_unit_parameter_map_counts_what_the_granularity_costs(make_setup, kind):
    """The entries a unit owns for magnitude/taylor are exactly the parameters its
    granularity says it removes (biases included)."""
    ctx = make_ctx(make_setup("llama3", [kind], attention_bias=True, mlp_bias=True))
    counts = torch.cat([
        layer_unit_sums(site, kind, lambda p: torch.ones_like(p)) for site in ctx.structure.layers
    ])
    assert torch.equal(counts.to(torch.int64), ctx.layout[kind].cost)


# -- wanda-sp ---------------------------------------------------------------------------


def wanda_reference(model, windows: torch.Tensor) -> tuple[list[float], list[float]]:
    """Channel and head scores from one ordinary forward of the whole model, with the
    o_proj / down_proj inputs recorded by hooks and reduced by loops over tokens."""
    config = model.config
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    inputs: dict[tuple[int, str], list[torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        for name, module in (("o", layer.self_attn.o_proj), ("down", layer.mlp.down_proj)):
            handles.append(module.register_forward_pre_hook(
                lambda _m, args, key=(i, name): inputs.setdefault(key, []).append(args[0].detach())))
    with torch.no_grad():
        model(input_ids=windows)
    for handle in handles:
        handle.remove()

    def input_norms(key) -> torch.Tensor:
        tokens = [row for x in inputs[key] for seq in x for row in seq]  # every token, one by one
        total = torch.zeros(tokens[0].numel(), dtype=torch.float64)
        for token in tokens:
            total += token.double() ** 2
        return total / len(tokens)

    channel, head = [], []
    for i, layer in enumerate(model.model.layers):
        weight = layer.mlp.down_proj.weight.detach().double().abs()
        norms = input_norms((i, "down")).sqrt()
        channel += [float((weight[:, j] * norms[j]).mean()) for j in range(weight.shape[1])]
        weight = layer.self_attn.o_proj.weight.detach().double().abs()
        norms = input_norms((i, "o")).sqrt()
        per_head = [sum(float((weight[:, j] * norms[j]).mean())
                        for j in range(h * head_dim, (h + 1) * head_dim)) for h in range(n_heads)]
        size = n_heads // n_kv
        head += [sum(per_head[g * size:(g + 1) * size]) / size for g in range(n_kv)]
    return channel, head


@pytest.mark.parametrize("arch", ["llama", "llama3", "mistral"])
def test_wanda_sp_layer_by_layer_equals_a_full_forward_reference(make_setup, arch):
    # mistral's sliding window (16) is shorter than the windows: its layers get their own
    # mask; the reference runs all windows in one batch, the implementation in batches of 4
    setup = make_setup(arch, ["channel", "head"])
    model, ctx = setup.model, make_ctx(setup)
    scores = scores_of("wanda-sp", ctx, n_sequences=N_SEQ, seq_len=SEQ_LEN, batch_size=4)
    channel, head = wanda_reference(model, calibration_windows()[:N_SEQ, :SEQ_LEN])
    expected = torch.tensor(channel + head, dtype=torch.float64)
    assert torch.allclose(scores, expected, rtol=1e-4, atol=1e-7)


def test_wanda_sp_leaves_the_model_as_it_was(make_setup):
    setup = make_setup("llama", ["channel"])
    model = setup.model
    layers = list(model.model.layers)
    wrapped = layers[1].forward  # an instance-level forward, as accelerate installs
    layers[1].forward = wrapped
    before = model(input_ids=calibration_windows()[:2]).logits
    scores_of("wanda-sp", make_ctx(setup), n_sequences=N_SEQ, seq_len=SEQ_LEN)
    assert layers[1].__dict__["forward"] is wrapped
    assert all("forward" not in layer.__dict__ for i, layer in enumerate(layers) if i != 1)
    assert torch.equal(model(input_ids=calibration_windows()[:2]).logits, before)


# -- layerwise-ppl ----------------------------------------------------------------------


def nll_without_layer(model, index: int, windows: torch.Tensor) -> float:
    shorter = copy.deepcopy(model)
    del shorter.model.layers[index]
    for position, layer in enumerate(shorter.model.layers):
        layer.self_attn.layer_idx = position
    shorter.config.num_hidden_layers -= 1
    with torch.no_grad():
        return float(shorter(input_ids=windows, labels=windows).loss)


@pytest.mark.parametrize("arch", ["llama", "llama3"])
def test_layerwise_ppl_equals_deleting_each_layer(make_setup, arch):
    setup = make_setup(arch, ["layer"])
    model, ctx = setup.model, make_ctx(setup)
    windows = calibration_windows()[:N_SEQ, :SEQ_LEN]
    expected = torch.tensor([nll_without_layer(model, i, windows) for i in range(4)],
                            dtype=torch.float64)
    nll = scores_of("layerwise-ppl", ctx, n_sequences=N_SEQ, seq_len=SEQ_LEN, batch_size=4)
    assert torch.allclose(nll, expected, rtol=1e-4)
    # without the run's oracle (a direct caller), one is built from the context
    ppl = scores_of("layerwise-ppl", dataclasses.replace(ctx, oracle=None), n_sequences=N_SEQ,
                    seq_len=SEQ_LEN, metric="ppl")
    assert torch.allclose(ppl, expected.exp(), rtol=1e-4)


# -- taylor -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["param-first", "vectorize"])
def test_taylor_equals_direct_autograd(make_setup, variant):
    setup = make_setup("llama3", mlp_bias=True)
    model, ctx = setup.model, make_ctx(setup)
    windows = calibration_windows()[:N_SEQ, :SEQ_LEN]
    params = [p for layer in model.model.layers for p in layer.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    loss = model(input_ids=windows, labels=windows).loss  # the mean over every token at once
    grads = dict(zip(params, torch.autograd.grad(loss, params), strict=True))

    def first_order(p: torch.nn.Parameter) -> torch.Tensor:
        return p.detach().double() * grads[p].double()

    expected = []
    for unit_set in ctx.layout:
        for layer, index in zip(unit_set.layer.tolist(), unit_set.index.tolist(), strict=True):
            terms = unit_entries(model, unit_set.kind, layer, index, first_order)
            if variant == "param-first":
                expected.append(float(sum(t.abs().sum() for t in terms)))
            else:
                expected.append(float(sum(t.sum().abs() for t in terms)))
    for p in model.parameters():
        p.requires_grad_(True)
    sentinel = torch.full_like(params[0], 7.0)
    params[0].grad = sentinel
    frozen = model.model.embed_tokens.weight
    frozen.requires_grad_(False)

    scores = scores_of("taylor", ctx, n_sequences=N_SEQ, seq_len=SEQ_LEN, batch_size=4,
                       variant=variant)
    assert torch.allclose(scores, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-9)
    # flags and existing gradients are restored
    assert params[0].grad is sentinel
    assert not frozen.requires_grad and model.lm_head.weight.requires_grad
    assert all(p.grad is None for p in params[1:])


def test_taylor_on_a_half_precision_model_accumulates_in_float32(make_setup):
    setup = make_setup("llama", ["channel", "head"])
    full = scores_of("taylor", make_ctx(setup), n_sequences=N_SEQ, seq_len=SEQ_LEN, batch_size=2)
    setup.model.to(torch.bfloat16)
    half = scores_of("taylor", make_ctx(setup), n_sequences=N_SEQ, seq_len=SEQ_LEN, batch_size=2)
    assert all(p.grad is None for p in setup.model.parameters())
    assert torch.corrcoef(torch.stack([full, half]))[0, 1] > 0.95


# -- random, uniform --------------------------------------------------------------------


def test_random_is_seeded_reproducible_and_independent_of_the_loop_stream(make_setup):
    setup = make_setup("llama", ["channel", "head"])
    first = scores_of("random", make_ctx(setup, seed=3, calibration=False))
    again = scores_of("random", make_ctx(setup, seed=3, calibration=False))
    other = scores_of("random", make_ctx(setup, seed=4, calibration=False))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert bool(((first >= 0) & (first < 1)).all()) and first.unique().numel() == first.numel()
    # the optimisation loop's generator is seeded with the run's seed: the start must not
    # be made of the very uniforms the first masks are drawn from
    loop_stream = torch.rand(first.numel(), generator=torch.Generator().manual_seed(3),
                             dtype=torch.float64)
    assert not torch.allclose(first, loop_stream)


def test_uniform_starts_every_unit_at_the_keep_ratio(make_setup):
    ctx = make_ctx(make_setup("llama", ["channel", "head"]), calibration=False)
    scores = scores_of("uniform", ctx)
    assert scores.unique().numel() == 1
    free = torch.ones(len(ctx.layout), dtype=torch.bool)
    assert torch.allclose(sigmoid_norm(scores, ctx.layout, 0.6, free),
                          torch.full((len(ctx.layout),), 0.6, dtype=torch.float64))
    cls = get_registry().cls("initializer", "uniform")
    with pytest.raises(ValidationError):
        cls.Config(transform="score-const")


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), [("wanda-sp", "layer"), ("layerwise-ppl", "channel"),
                                            ("layerwise-ppl", "head")])
def test_unsupported_granularity_is_a_one_line_config_error(make_setup, name, kind):
    ctx = make_ctx(make_setup("llama", [kind]))
    with pytest.raises(ConfigError, match=f"cannot score {kind} units") as info:
        scores_of(name, ctx)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["wanda-sp", "layerwise-ppl", "taylor"])
def test_missing_calibration_is_a_one_line_data_error(make_setup, name):
    kinds = ["layer"] if name == "layerwise-ppl" else ["channel"]
    ctx = make_ctx(make_setup("llama", kinds), calibration=False)
    with pytest.raises(DataError, match="needs calibration data") as info:
        scores_of(name, ctx)
    assert "\n" not in str(info.value)


def test_a_short_calibration_set_is_scored_with_a_warning(make_setup):
    ctx = make_ctx(make_setup("llama", ["layer"]))
    short = dataclasses.replace(ctx, calibration=lambda n, t: iter([calibration_windows()[:3, :t]]))
    with pytest.warns(RuntimeWarning, match="gave 3 of the 6 windows"):
        scores = scores_of("layerwise-ppl", short, n_sequences=N_SEQ, seq_len=SEQ_LEN)
    assert scores.shape == (4,)


@pytest.mark.parametrize("name", ["random", "uniform", "magnitude"])
def test_data_free_initializers_need_no_calibration(make_setup, name):
    ctx = make_ctx(make_setup("llama"), calibration=False)
    scores = scores_of(name, ctx)
    assert scores.shape == (len(ctx.layout),) and bool(torch.isfinite(scores).all())


def test_every_builtin_initializer_is_registered_with_its_options():
    registry = get_registry()
    specs = registry.specs("initializer")
    assert {"random", "uniform", "magnitude", "wanda-sp", "layerwise-ppl", "taylor"} <= set(specs)
    wanda = specs["wanda-sp"].cls.Config()
    assert (wanda.n_sequences, wanda.seq_len, wanda.transform) == (128, 1024, "sigmoid-norm")
    with pytest.raises(ValidationError):
        specs["taylor"].cls.Config(variant="second-order")
