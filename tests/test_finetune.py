"""``pgprune finetune``: LoRA recovery fine-tuning of pruned models (tiny in-process models)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pgprune_core.cli import build_app
from pgprune_core.config.resolve import resolve_config
from pgprune_core.errors import ConfigError
from pgprune_core.recovery.config import resolve_finetune
from pgprune_core.recovery.data import IGNORE, alpaca_examples, alpaca_prompt
from pgprune_core.recovery.lora import attach, resolve_targets
from pgprune_core.recovery.pipeline import configure, load_resumable, run_finetune
from pgprune_core.recovery.trainer import objective_terms
from pgprune_core.report.progress import SilentReporter
from pgprune_core.run.pipeline import run_pipeline
from pgprune_core.testing import save_run_assets, tiny_tokenizer

peft = pytest.importorskip("peft")

ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue is a colour."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "The sum is 5."},
    {"instruction": "Say hello.", "output": "Hello there, friend."},
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny dense model, texts, an Alpaca file and a run that pruned it (50 %, the same
    rate in every layer, initializer scores only)."""
    root = tmp_path_factory.mktemp("finetune")
    found = save_run_assets(root, calib_chars=12000, eval_chars=4000)
    config = resolve_config(None, None, {
        "model.name_or_path": str(found["model"]), "data.calib_file": str(found["calib"]),
        "data.eval": [], "data.eval_files": [str(found["eval"])], "data.seq_len": 32,
        "data.cache_dir": str(root / "cache"), "training.batch_size": 2, "init.name": "random",
        "estimator.name": "none", "pruning.prune_rate": 0.5, "pruning.budget": "local",
        "evaluation.evaluators": ["perplexity"], "evaluation.seq_len": 32,
        "evaluation.dense": False, "output.dir": str(root / "run"),
    })
    run_pipeline(config)
    alpaca = root / "alpaca.jsonl"
    alpaca.write_text("".join(json.dumps(r) + "\n" for r in ALPACA * 4))
    return {**found, "run": root / "run", "alpaca": alpaca}


def finetune_config(assets, out: Path, source: Path | None = None, **overrides):
    flat = {"data.train_file": str(assets["calib"]), "output.dir": str(out),
            "training.steps": 4, "training.batch_size": 2, "training.lr": 5e-3,
            "data.seq_len": 32, "data.cache_dir": str(assets["root"] / "cache"),
            "data.eval_files": [str(assets["eval"])], "evaluation.seq_len": 32,
            "evaluation.max_windows": 20, "evaluation.teacher": False}
    flat.update(overrides)
    return configure(resolve_finetune(None, None, flat), str(source or assets["run"]))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def ids_for(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (2, 16), generator=generator)


def test_merged_model_equals_the_unmerged_adapters(assets, tmp_path):
    from pgprune_core import load_pruned

    out = tmp_path / "ft"
    result = run_finetune(finetune_config(assets, out))
    assert result.metrics["after"]["ppl"] and result.metrics["before"]["ppl"]
    for name in ("finetune.json", "config.yaml", "trainer.pt", "metrics.jsonl", "metrics.json",
                 "report.md", "loss.png", "before.json"):
        assert (out / name).is_file(), name
    assert "Before vs after" in (out / "report.md").read_text()
    merged = load_pruned(out / "model")  # the input's format, the same loader
    base = load_pruned(assets["run"] / "model")
    unmerged = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = ids_for(merged)
    expected = logits(unmerged, ids)
    torch.testing.assert_close(logits(merged, ids), expected, atol=1e-5, rtol=1e-5)
    # the adapters did change the model
    assert (logits(load_pruned(assets["run"] / "model"), ids) - expected).abs().max() > 1e-4
    assert merged.config.pgprune["extra"]["finetune"]["steps"] == 4


def exported(assets, tmp_path: Path, fmt: str) -> Path:
    """The pruned model of ``assets`` in ``fmt`` (``pgprune export``'s formats)."""
    from pgprune_core.model.export import export_directory

    if fmt == "pgprune":
        return assets["run"] / "model"
    export_directory(assets["run"] / "model", tmp_path / fmt, fmt)
    return tmp_path / fmt


def load_model(path: Path):
    """The model of ``path`` by the loader of its format (load_pruned, load_decilm or a
    transformers class)."""
    from pgprune_core.run.loading import load_for_eval

    return load_for_eval(str(path), path, "float32", "cpu").model


@pytest.mark.parametrize("fmt", ["pgprune", "decilm", "hf"])
def test_only_lora_parameters_get_gradients(assets, tmp_path, fmt):
    model = load_model(exported(assets, tmp_path, fmt))
    _, targets = resolve_targets(model, None)
    peft_model = attach(model, finetune_config(assets, Path("unused")).lora, targets)
    peft_model.train()
    ids = ids_for(model)
    out = peft_model(input_ids=ids, use_cache=False).logits
    ce, _, _ = objective_terms(out, ids, None)
    ce.backward()
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert {n for n, p in peft_model.named_parameters() if p.requires_grad} == with_grad
    assert all(p.grad is None for n, p in peft_model.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("fmt", ["decilm", "hf"])
def test_an_export_is_finetuned_and_saved_in_its_own_format(assets, tmp_path, fmt):
    from pgprune_core.run.loading import directory_format

    source = exported(assets, tmp_path, fmt)
    assert directory_format(source) == fmt
    result = run_finetune(finetune_config(assets, tmp_path / "ft", source=source))
    run = result.metrics["finetune"]
    assert run["format"] == fmt and directory_format(result.path / "model") == fmt
    base, merged = load_model(source), load_model(result.path / "model")
    assert type(merged) is type(base)
    # the merge changed the adapted projections' weights and nothing else
    before, after = base.state_dict(), merged.state_dict()
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed
    assert all(name.endswith(".weight") and name.split(".")[-2] in run["target_modules"]
               for name in changed)
    assert sum(p.numel() for p in merged.parameters()) == result.metrics["before"]["params"]
    unmerged = peft.PeftModel.from_pretrained(load_model(source), result.path / "adapter").eval()
    ids = ids_for(merged)
    torch.testing.assert_close(logits(merged, ids), logits(unmerged, ids), atol=1e-5, rtol=1e-5)
    assert (logits(base, ids) - logits(merged, ids)).abs().max() > 1e-4


def test_the_first_steps_loss_is_the_models_own_cross_entropy(assets):
    """The adapters start as zero updates, so step 1's logged loss is the pruned model's
    mean next-token loss on the step's sequences, as transformers computes it from labels."""
    from pgprune_core.recovery.data import load_examples
    from pgprune_core.recovery.trainer import Trainer

    config = finetune_config(assets, Path("unused"), **{
        "data.train_file": str(assets["alpaca"]), "data.seq_len": 192,
        "training.grad_accum": 2, "lora.dropout": 0.3})
    model = load_model(assets["run"] / "model")
    reference = load_model(assets["run"] / "model")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets["run"] / "model")
    examples = load_examples(config.data, tokenizer)
    _, targets = resolve_targets(model, None)
    peft_model = attach(model, config.lora, targets)
    trainer = Trainer(config, peft_model, None, examples, sink=None, digest="", reporter=SilentReporter())
    batches = trainer._micro_batches(0)
    batch = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    assert (batch["labels"] == IGNORE).any()  # the prompts are not targets
    with torch.no_grad():
        expected = reference(**batch, use_cache=False).loss
    peft_model.train()
    stats = trainer.step(0)
    assert stats["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert stats["tokens"] == int((batch["labels"][:, 1:] != IGNORE).sum())


def test_distilling_the_dense_model_into_itself_costs_nothing(assets, tmp_path):
    from pgprune_core.recovery.data import load_examples
    from pgprune_core.recovery.trainer import Trainer
    from pgprune_core.run.loading import load_for_eval

    config = finetune_config(assets, tmp_path / "self", source=assets["model"],
                             **{"objective.name": "kl", "model.teacher": str(assets["model"]),
                                "lora.dropout": 0.3})
    student = load_for_eval(str(assets["model"]), assets["model"], "float32", "cpu")
    teacher = load_for_eval(str(assets["model"]), assets["model"], "float32", "cpu").model
    _, targets = resolve_targets(student.model, None)
    peft_model = attach(student.model, config.lora, targets)
    examples = load_examples(config.data, student.tokenizer)
    trainer = Trainer(config, peft_model, teacher, examples, sink=None, digest="", reporter=SilentReporter())
    peft_model.train()
    stats = trainer.step(0)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-7) and stats["loss"] == pytest.approx(0.0, abs=1e-7)
    assert stats["ce"] > 1.0


def test_kl_term_is_positive_for_different_models():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=generator), torch.randn(2, 5, 7, generator=generator)
    labels = torch.randint(0, 7, (2, 5), generator=generator)
    labels[0, 3] = IGNORE
    _, kl, count = objective_terms(student, labels, teacher)
    assert count == 7 and kl > 0
    _, zero, _ = objective_terms(teacher, labels, teacher)
    assert float(zero) == pytest.approx(0.0, abs=1e-6)


class StopAt(SilentReporter):
    """Raises KeyboardInterrupt (a kill) once the loop reports step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def loop_update(self, step, stats):
        if step == self.step:
            raise KeyboardInterrupt


def test_resume_equals_uninterrupted(assets, tmp_path):
    options = {"training.steps": 5, "training.checkpoint_every": 2, "training.grad_accum": 2,
               "lora.dropout": 0.2, "data.eval_files": [], "training.warmup_steps": 2}
    whole = run_finetune(finetune_config(assets, tmp_path / "whole", **options))
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run_finetune(finetune_config(assets, killed, **options), reporter=StopAt(3))
    assert json.loads((killed / "finetune.json").read_text())["status"] == "interrupted"
    resumed = run_finetune(load_resumable(killed), resume=killed)
    from safetensors.torch import load_file

    a = load_file(str(whole.path / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda p: [json.loads(line)["loss"] for line in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(whole.path) == losses(killed)
    assert resumed.metrics["finetune"]["last_loss"] == whole.metrics["finetune"]["last_loss"]


def test_alpaca_examples_put_the_loss_on_the_response_only():
    tokenizer = tiny_tokenizer()
    examples = alpaca_examples(ALPACA, tokenizer, seq_len=192, response_only=True)
    assert len(examples) == 3 and examples.kind == "alpaca"
    row, labels = examples.input_ids[1], examples.labels[1]
    prompt = tokenizer(alpaca_prompt(ALPACA[1]))["input_ids"]
    assert (labels[: len(prompt)] == IGNORE).all()
    targets = labels[labels != IGNORE]
    assert tokenizer.decode(targets[:-1]).strip() == "The sum is 5."
    assert int(targets[-1]) == tokenizer.eos_token_id
    assert torch.equal(row[len(prompt): len(prompt) + targets.numel()], targets)
    every = alpaca_examples(ALPACA, tokenizer, seq_len=192, response_only=False)
    assert every.target_tokens > examples.target_tokens


def test_hf_export_is_finetuned_into_the_hf_format_on_alpaca(assets, tmp_path):
    from transformers import AutoModelForCausalLM

    from pgprune_core.model.export import export_directory

    export_directory(assets["run"] / "model", tmp_path / "hf", "hf")
    result = invoke("finetune", str(tmp_path / "hf"), "--train-file", str(assets["alpaca"]),
                    "--out", str(tmp_path / "ft"), "--steps", "2", "--data.seq_len", "192",
                    "--training.batch_size", "2", "--lora.target_modules", "q_proj,down_proj")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "ft" / "model" / "config.json").read_text())
    assert "pgprune" not in config
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ft" / "model")
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["finetune"]["data_format"] == "alpaca" and metrics["finetune"]["format"] == "hf"
    assert metrics["finetune"]["target_modules"] == ["q_proj", "down_proj"]
    assert sum(p.numel() for p in model.parameters()) == metrics["before"]["params"]


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def one_line_exit_2(result, *needles: str) -> None:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def no_loading(monkeypatch):
    """Fail if any weights are loaded: user mistakes are caught before."""
    import pgprune_core.recovery.pipeline as pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(pipeline, "_load", refuse)


@pytest.mark.parametrize(("args", "needles"), [
    (["--train-file", "nope.txt"], ["training file not found", "nope.txt"]),
    (["--lora.target_modules", "q_proj,qkv"], ["unknown LoRA target module 'qkv'", "q_proj"]),
    (["--lora.r", "0"], ["lora.r"]),
    (["--steps", "3", "--epochs", "1"], ["--steps or --epochs"]),
    (["--lora.alpah", "4"], ["unknown key 'alpah'", "did you mean 'alpha'"]),
    (["--objective", "kd"], ["objective.name"]),
    (["--training.schedule", "linear"], ["training.schedule"]),
    (["--eval-file", "missing.txt"], ["evaluation file not found"]),
])
def test_bad_inputs_get_one_line_and_exit_2(assets, tmp_path, no_loading, args, needles):
    defaults = {"--train-file": str(assets["calib"]), "--out": str(tmp_path / "ft")}
    extra = [part for key, value in defaults.items() if key not in args for part in (key, value)]
    result = invoke("finetune", str(assets["run"]), *extra, *args)
    one_line_exit_2(result, *needles)
    assert not (tmp_path / "ft").exists()


def test_distilling_a_model_that_records_no_dense_model_needs_a_teacher(assets, tmp_path, no_loading):
    result = invoke("finetune", str(assets["model"]), "--train-file", str(assets["calib"]),
                    "--out", str(tmp_path / "ft"), "--objective", "kl")
    one_line_exit_2(result, "--teacher", "records none")
    missing = invoke("finetune", str(tmp_path / "nowhere"), "--train-file", str(assets["calib"]),
                     "--out", str(tmp_path / "ft"))
    one_line_exit_2(missing, "no such model or run directory")


def test_a_run_that_saved_no_model_gets_one_line(assets, tmp_path, no_loading):
    import shutil

    unsaved = tmp_path / "run"
    unsaved.mkdir()
    shutil.copy(assets["run"] / "run.json", unsaved / "run.json")
    result = invoke("finetune", str(unsaved), "--train-file", str(assets["calib"]),
                    "--out", str(tmp_path / "ft"))
    one_line_exit_2(result, "holds no saved model")
    assert not (tmp_path / "ft").exists()


def test_a_missing_peft_names_the_install_command(assets, tmp_path, no_loading, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    result = invoke("finetune", str(assets["run"]), "--train-file", str(assets["calib"]),
                    "--out", str(tmp_path / "ft"))
    one_line_exit_2(result, "peft", "pip install")
    with pytest.raises(ConfigError):
        from pgprune_core.recovery.lora import require_peft

        require_peft()


def test_dry_run_prints_the_located_model(assets, tmp_path, no_loading):
    result = invoke("finetune", str(assets["run"]), "--train-file", str(assets["calib"]),
                    "--out", str(tmp_path / "ft"), "--objective", "kl", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "format: pgprune" in result.output and str(assets["model"]) in result.output


def test_every_finetune_key_is_documented_with_its_default():
    import re

    import yaml

    from pgprune_core.recovery.config import FinetuneConfig

    text = (Path(__file__).resolve().parent.parent / "docs" / "finetune.md").read_text()
    rows = {m.group(1): m.group(2) for m in
            re.finditer(r"^\| `([a-z_]+\.[a-z_]+)` \|[^\n]*?\| `([^`]*)` \|", text, re.M)}
    defaults = json.loads(FinetuneConfig().model_dump_json())
    for section, keys in defaults.items():
        for key, value in keys.items():
            assert f"{section}.{key}" in rows, f"{section}.{key}: no row in docs/finetune.md"
            assert yaml.safe_load(rows[f"{section}.{key}"]) == value, f"{section}.{key}"

