"""Export of pruned models (hf, decilm, pgprune): reloaded logits equal the masked model's,
generation works, parameter counts add up, and what a format cannot express is refused in
one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from pgprune_core.cli import build_app
from pgprune_core.config.sections import OutputSection
from pgprune_core.errors import ConfigError, ExportError
from pgprune_core.model import decilm_modeling
from pgprune_core.model.export import EXPORT_FORMATS, export_directory, export_pruned
from pgprune_core.model.surgery import load_pruned, prune_model, save_pruned
from pgprune_core.testing import tiny_tokenizer

from .conftest import logits, masked_logits

#: (tiny architecture, adapter): every llama-family adapter of this repository
ADAPTERS = [("llama", "llama"), ("llama3", "vicuna"), ("mistral", "mistral")]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _setup(make_setup, arch, adapter, **config):
    # the LLaMA-3-like model ties its embeddings (the lm_head is not a tensor of its own)
    setup = make_setup(arch, tie_word_embeddings=arch == "llama3", **config)
    if adapter != setup.adapter_name:
        setup.adapter_name = adapter
    return setup


def _uniform_keep(setup, seed=0, heads=1, channels=10, drop_layers=(2,)):
    """Every layer loses ``heads`` KV groups and ``channels`` channels (which ones at random)."""
    generator = torch.Generator().manual_seed(seed)
    parts = setup.layout.split(torch.ones(len(setup.layout), dtype=torch.bool))
    for kind, count in (("head", heads), ("channel", channels)):
        units = setup.layout[kind]
        for layer in units.layer.unique().tolist():
            cols = (units.layer == layer).nonzero().squeeze(1)
            parts[kind][cols[torch.randperm(cols.numel(), generator=generator)[:count]]] = False
    parts["layer"][list(drop_layers)] = False
    return setup.layout.join(parts)


def _masked_then_pruned(setup, keep, ids):
    masked = masked_logits(setup, ids, keep)
    prune_model(setup.structure, setup.layout, setup.granularities, keep)
    return masked


_logits = logits


def _greedy(model, ids):
    return model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)


def _saved(setup, tokenizer, path):
    return save_pruned(setup.model, tokenizer, path, adapter_name=setup.adapter_name, base_model="tiny")


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_formats_are_the_config_choices():
    assert OutputSection.model_fields["format"].annotation.__args__ == EXPORT_FORMATS


@pytest.mark.parametrize("arch,adapter", ADAPTERS)
def test_hf_export_loads_without_remote_code(make_setup, tokenizer, tmp_path, arch, adapter):
    setup = _setup(make_setup, arch, adapter)
    ids = setup.ids(rows=2, length=10)
    masked = _masked_then_pruned(setup, _uniform_keep(setup), ids)
    params = _n_params(setup.model)
    result = export_directory(_saved(setup, tokenizer, tmp_path / "pg"), tmp_path / "hf", "hf")
    assert not list(result.path.glob("*.py"))
    config = json.loads((result.path / "config.json").read_text())
    assert "auto_map" not in config and "pgprune" not in config
    assert config["num_hidden_layers"] == 3 and config["head_dim"] == setup.structure.layers[0].attention.head_dim
    model = AutoModelForCausalLM.from_pretrained(result.path)
    assert type(model).__module__.startswith("transformers.models.")
    assert (_logits(model, ids) - masked).abs().max() <= 1e-4
    assert result.params == _n_params(model) == params
    assert torch.equal(_greedy(model, ids[:, :4]), _greedy(setup.model, ids[:, :4]))


@pytest.mark.parametrize("arch,adapter", ADAPTERS)
def test_decilm_export_expresses_dropped_blocks_and_layers(make_setup, tokenizer, tmp_path, arch, adapter):
    setup = _setup(make_setup, arch, adapter)
    ids = setup.ids(rows=2, length=10)
    keep = _uniform_keep(setup, seed=1, channels=0, drop_layers=(1,))
    parts = setup.layout.split(keep)
    parts["head"][setup.layout["head"].layer == 3] = False  # layer 3: no attention left
    channels = setup.layout["channel"]
    parts["channel"][(channels.layer == 0) & (channels.index < 20)] = False  # widths differ
    parts["channel"][channels.layer == 2] = False  # layer 2: no MLP left
    masked = _masked_then_pruned(setup, setup.layout.join(parts), ids)
    params = _n_params(setup.model)
    result = export_directory(_saved(setup, tokenizer, tmp_path / "pg"), tmp_path / "d", "decilm")
    config = json.loads((result.path / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["num_hidden_layers"] == 4
    blocks = config["block_configs"]
    assert blocks[1]["attention"]["no_op"] and blocks[1]["ffn"]["no_op"]  # the dropped layer
    assert blocks[3]["attention"]["no_op"] and not blocks[3]["ffn"]["no_op"]
    assert blocks[2]["ffn"]["no_op"] and not blocks[2]["attention"]["no_op"]
    group = setup.structure.layers[0].attention.group_size
    assert blocks[0]["attention"]["n_heads_in_group"] == group
    assert blocks[0]["ffn"]["intermediate_size"] == 28 and any("multiples of 256" in n for n in result.notes)
    model = AutoModelForCausalLM.from_pretrained(result.path, trust_remote_code=True)
    assert type(model).__name__ == "DeciLMForCausalLM"
    assert (_logits(model, ids) - masked).abs().max() <= 1e-4
    # no_op blocks carry no norm weights: the two norms of layers 2 (MLP) and 3 (attention)
    assert result.params == _n_params(model) == params - 2 * setup.structure.hidden_size
    assert torch.equal(_greedy(model, ids[:, :4]), _greedy(setup.model, ids[:, :4]))


def test_decilm_widths_that_are_multiples_of_256_are_written_as_ffn_mult(make_setup, tokenizer, tmp_path):
    setup = make_setup("llama3", kinds=("channel", "head"), intermediate_size=512)
    ids = setup.ids(rows=1, length=8)
    keep = torch.ones(len(setup.layout), dtype=torch.bool)
    channels = setup.layout["channel"]
    keep[setup.layout.offsets["channel"]][(channels.layer == 1) & (channels.index % 2 == 0)] = False
    masked = _masked_then_pruned(setup, keep, ids)
    result = export_pruned(setup.model, tokenizer, tmp_path / "d", "decilm", adapter_name="llama",
                           base_model="tiny")
    assert result.notes == []
    blocks = json.loads((result.path / "config.json").read_text())["block_configs"]
    hidden = setup.structure.hidden_size
    widths = [decilm_modeling.ffn_mult_to_intermediate_size(b["ffn"]["ffn_mult"], hidden) for b in blocks]
    assert widths == [512, 256, 512, 512] and all("intermediate_size" not in b["ffn"] for b in blocks)
    # NVIDIA's FFNConfig keeps ffn_mult to 6 decimals: the widths survive that rounding too
    assert [decilm_modeling.ffn_mult_to_intermediate_size(round(b["ffn"]["ffn_mult"], 6), hidden)
            for b in blocks] == widths
    model = AutoModelForCausalLM.from_pretrained(result.path, trust_remote_code=True)
    assert (_logits(model, ids) - masked).abs().max() <= 1e-4


@pytest.mark.parametrize("arch,adapter", ADAPTERS)
def test_pgprune_export_is_the_saved_format(make_setup, tokenizer, tmp_path, arch, adapter):
    setup = _setup(make_setup, arch, adapter)
    ids = setup.ids(rows=2, length=10)
    masked = _masked_then_pruned(setup, setup.keep(seed=3, no_heads=[0], drop_layers=[1]), ids)
    result = export_directory(_saved(setup, tokenizer, tmp_path / "pg"), tmp_path / "out", "pgprune")
    model = load_pruned(result.path)
    assert (_logits(model, ids) - masked).abs().max() <= 1e-4
    assert result.params == _n_params(model) == _n_params(setup.model)


@pytest.mark.parametrize("arch,adapter", ADAPTERS)
def test_hf_refuses_per_layer_shapes_and_writes_nothing(make_setup, tokenizer, tmp_path, arch, adapter):
    setup = _setup(make_setup, arch, adapter)
    keep = _uniform_keep(setup)
    channels = setup.layout["channel"]
    keep[setup.layout.offsets["channel"]][(channels.layer == 1) & (channels.index < 30)] = False
    prune_model(setup.structure, setup.layout, setup.granularities, keep)
    with pytest.raises(ExportError) as info:
        export_pruned(setup.model, tokenizer, tmp_path / "hf", "hf", adapter_name=adapter, base_model="x")
    message = str(info.value)
    assert "\n" not in message and "MLP width" in message and "layer 1" in message
    assert "--pruning.shape uniform" in message
    assert not (tmp_path / "hf").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("arch,adapter", ADAPTERS)
def test_decilm_refuses_per_layer_query_heads(make_setup, tokenizer, tmp_path, arch, adapter):
    setup = _setup(make_setup, arch, adapter, kinds=("head",))
    keep = torch.ones(len(setup.layout), dtype=torch.bool)
    keep[0] = False  # layer 0 loses one KV group, the others none
    prune_model(setup.structure, setup.layout, setup.granularities, keep)
    with pytest.raises(ExportError) as info:
        export_pruned(setup.model, tokenizer, tmp_path / "d", "decilm", adapter_name=adapter, base_model="x")
    message = str(info.value)
    assert "\n" not in message and "query-head count is global" in message and "uniform-heads" in message
    assert not list(tmp_path.iterdir())


def test_cli_export_and_its_refusals(make_setup, tokenizer, tmp_path):
    setup = make_setup("llama3")
    keep = _uniform_keep(setup)
    keep[setup.layout.offsets["channel"].start:][:5] = False  # layer 0 narrower than the rest
    prune_model(setup.structure, setup.layout, setup.granularities, keep)
    saved = _saved(setup, tokenizer, tmp_path / "pg")
    runner = CliRunner()
    refused = runner.invoke(build_app(), ["export", str(saved), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert "cannot export as hf" in refused.output and not (tmp_path / "hf").exists()
    unknown = runner.invoke(build_app(), ["export", str(saved), "-f", "gguf", "-o", str(tmp_path / "g")])
    assert unknown.exit_code == 2 and "choose one of pgprune, hf, decilm" in unknown.output
    assert not (tmp_path / "g").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    busy = runner.invoke(build_app(), ["export", str(saved), "-f", "pgprune", "-o", str(tmp_path / "full")])
    assert busy.exit_code == 2 and "not empty" in busy.output
    ok = runner.invoke(build_app(), ["export", str(saved), "--format", "decilm", "--out", str(tmp_path / "d")])
    assert ok.exit_code == 0, ok.output
    assert (Path(tmp_path / "d") / "modeling_decilm.py").is_file()


# -- end to end: `pgprune run --output.format ...` ------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from pgprune_core.testing import save_run_assets

    return save_run_assets(tmp_path_factory.mktemp("assets"), calib_chars=6000, eval_chars=6000)


def _run(assets, out, **overrides):
    from pgprune_core.config.resolve import resolve_config
    from pgprune_core.run.pipeline import run_pipeline

    flat = {
        "model.name_or_path": str(assets["model"]), "data.calib_file": str(assets["calib"]),
        "data.eval": [], "data.eval_files": [str(assets["eval"])], "data.seq_len": 16,
        "data.cache_dir": str(assets["root"] / "cache"), "training.steps": 2,
        "training.batch_size": 2, "init.name": "random", "estimator.name": "none",
        "evaluation.evaluators": ["perplexity"], "evaluation.seq_len": 16,
        "pruning.granularity": "channel,head,layer", "pruning.prune_rate": 0.5,
        "output.dir": str(out), **overrides,
    }
    config = resolve_config(None, None, flat)
    return config, run_pipeline(config)


@pytest.mark.parametrize("fmt", ["hf", "decilm"])
def test_run_saves_the_model_in_the_requested_format(assets, tmp_path, fmt):
    overrides = {"output.format": fmt}
    if fmt == "decilm":
        overrides["pruning.shape"] = "uniform-heads"
    config, result = _run(assets, tmp_path / "run", **overrides)
    assert config.pruning.shape == ("uniform" if fmt == "hf" else "uniform-heads")
    path = result.run_dir / "model"
    kwargs = {} if fmt == "hf" else {"trust_remote_code": True}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    blocks = json.loads((path / "config.json").read_text()).get("block_configs", [])
    no_op_norms = sum(b["attention"]["no_op"] + b["ffn"]["no_op"] for b in blocks
                      if not (b["attention"]["no_op"] and b["ffn"]["no_op"]))
    hidden = model.config.hidden_size
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert _n_params(model) == metrics["pruned"]["params"] - no_op_norms * hidden
    ids = torch.randint(3, model.config.vocab_size, (1, 6))
    assert model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0).shape == (1, 10)


def test_run_refuses_a_format_that_cannot_express_the_shape_before_loading(assets, tmp_path):
    with pytest.raises(ConfigError) as info:
        _run(assets, tmp_path / "run", **{"output.format": "hf", "pruning.shape": "free"})
    assert "--pruning.shape uniform" in str(info.value)
    with pytest.raises(ConfigError, match="decilm, which writes such blocks as no_op"):
        _run(assets, tmp_path / "run", **{"output.format": "hf", "pruning.granularity": "mlp"})
    with pytest.raises(ConfigError, match="uniform-heads"):
        _run(assets, tmp_path / "run", **{"output.format": "decilm"})
    assert not (tmp_path / "run").exists()


def test_export_of_a_run_directory(assets, tmp_path):
    _, result = _run(assets, tmp_path / "run", **{"pruning.shape": "uniform"})
    runner = CliRunner()
    for fmt in ("hf", "decilm"):
        out = tmp_path / fmt
        done = runner.invoke(build_app(), ["export", str(result.run_dir), "--format", fmt, "--out", str(out)])
        assert done.exit_code == 0, done.output
        kwargs = {} if fmt == "hf" else {"trust_remote_code": True}
        assert AutoModelForCausalLM.from_pretrained(out, **kwargs).config.vocab_size == 320
    from pgprune_core.cli.eval_cmd import load_for_eval

    for fmt, how in (("hf", "adapter llama"), ("decilm", "pgprune decilm export")):
        loaded = load_for_eval(str(tmp_path / fmt), tmp_path / fmt, "float32", "cpu")
        assert loaded.how == how and loaded.tokenizer is not None
    again = runner.invoke(build_app(), ["export", str(tmp_path / "hf"), "--format", "decilm", "--out",
                                        str(tmp_path / "x")])
    assert again.exit_code == 2 and "not saved by pgprune" in again.output


# -- the shape options and the block granularities through `pgprune compare` ---------------
COMPARE_CASES = {
    "hf-uniform-x16": ("channel,head", ["--output.format", "hf", "--pruning.channel_multiple", "16"]),
    "decilm-uniform-heads-x16": ("channel,head", ["--output.format", "decilm", "--pruning.shape",
                                                  "uniform-heads", "--pruning.channel_multiple", "16"]),
    "pgprune-blocks": ("attention,mlp,channel", []),
}


def _check_decilm(model, metrics, granularity):
    config, blocks = model.config, model.config.block_configs
    kept = metrics["pruning"]["units_kept"]
    active = [b for b in blocks if not b.attention.no_op]
    if granularity == "channel,head":  # one KV-head count, widths multiples of 16
        assert len({b.attention.n_heads_in_group for b in active}) == 1
        widths = [0 if b.ffn.no_op else decilm_modeling.block_width(b.ffn, config.hidden_size)
                  for b in blocks]
        assert all(w % 16 == 0 for w in widths) and sum(widths) == kept["channel"]
    else:  # half of the attention and MLP blocks are no_op
        assert len(active) == kept["attention"] == 2
        assert sum(not b.ffn.no_op for b in blocks) == kept["mlp"] == 2
    no_op_norms = sum(b.attention.no_op + b.ffn.no_op for b in blocks)
    assert _n_params(model) == metrics["pruned"]["params"] - no_op_norms * config.hidden_size


@pytest.mark.parametrize("case", list(COMPARE_CASES))
def test_compare_cells_save_the_shapes_the_format_needs(assets, tmp_path, case):
    granularity, options = COMPARE_CASES[case]
    out = tmp_path / "cmp"
    args = ["compare", "--model", str(assets["model"]), "--calib-file", str(assets["calib"]),
            "--eval-file", str(assets["eval"]), "--steps", "2", "--batch-size", "2", "--seq-len", "16",
            "--evaluator", "perplexity", "--init", "magnitude", "--estimator", "none",
            "--estimator", "reinforce", "--granularity", granularity, "--rates", "0.5",
            "--in-process", "--out", str(out), "--data.eval", "[]",
            "--data.cache_dir", str(assets["root"] / "cache"), "--evaluation.seq_len", "16", *options]
    runner = CliRunner()
    done = runner.invoke(build_app(), args)
    assert done.exit_code == 0, done.output
    cells = sorted((out / "runs").iterdir())
    assert len(cells) == 2
    fmt = options[1] if options else "pgprune"
    for cell in cells:
        metrics = json.loads((cell / "metrics.json").read_text())
        if fmt == "pgprune":
            # a cell is an ordinary run directory: `pgprune export` converts it (decilm writes
            # the emptied blocks as no_op) or refuses in one line (hf has no empty blocks)
            refused = runner.invoke(build_app(), ["export", str(cell), "--format", "hf", "--out",
                                                  str(cell / "hf")])
            assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
            assert "no attention heads left" in refused.output and not (cell / "hf").exists()
            exported = runner.invoke(build_app(), ["export", str(cell), "--format", "decilm", "--out",
                                                   str(cell / "decilm")])
            assert exported.exit_code == 0, exported.output
            model = AutoModelForCausalLM.from_pretrained(cell / "decilm", trust_remote_code=True)
        else:
            model = AutoModelForCausalLM.from_pretrained(cell / "model", trust_remote_code=fmt == "decilm")
        if fmt == "hf":  # uniform (implied by the format), every width a multiple of 16
            assert type(model).__module__.startswith("transformers.models.")
            assert model.config.intermediate_size % 16 == 0 and model.config.intermediate_size < 48
            assert model.config.num_key_value_heads < 4
            assert _n_params(model) == metrics["pruned"]["params"]
        else:
            _check_decilm(model, metrics, granularity)
        ids = torch.randint(3, model.config.vocab_size, (1, 6))
        assert model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0).shape == (1, 10)
