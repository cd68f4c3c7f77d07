"""``pgprune eval`` on a model directory, a pgprune-saved model and a run directory."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from pgprune_core.cli import build_app
from pgprune_core.evaluation.perplexity import perplexity
from pgprune_core.testing import sample_text, save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(sample_text(3000))
    return path


def invoke(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def _json(output: str) -> dict:
    return json.loads(output[output.index("{"):])


def _expected_ppl(directory, text_file, seq_len, max_windows=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    rows = [line for line in text_file.read_text().splitlines()]
    ids = torch.tensor(tokenizer("\n\n".join(rows))["input_ids"])
    return perplexity(model, ids, seq_len=seq_len, max_windows=max_windows).ppl


def test_eval_model_dir_json_and_out(model_dir, text_file, tmp_path):
    out = tmp_path / "out"
    result = invoke("eval", str(model_dir), "--evaluator", "perplexity", "--eval-file",
                    str(text_file), "--seq-len", "16", "--device", "cpu", "--json",
                    "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                    "--perplexity.max_windows", "5")
    assert result.exit_code == 0, result.output
    metrics = _json(result.stdout)
    assert set(metrics) == {"params", "ppl", "ppl_tokens", "ppl_seq_len"}
    assert metrics["ppl_tokens"] == {"notes": 5 * 15}
    assert metrics["ppl"]["notes"] == pytest.approx(_expected_ppl(model_dir, text_file, 16, 5), rel=1e-5)
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_eval_run_directory_with_pruned_model(model_dir, text_file, tmp_path):
    from pgprune_core.model.surgery import save_pruned
    from pgprune_core.plugin.registry import get_registry

    if "llama" not in get_registry().names("adapter"):
        pytest.skip("the llama adapter plugin is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format": "pgprune-run/1"}))
    save_pruned(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir),
                run / "model", adapter_name="llama", base_model=str(model_dir))
    result = invoke("eval", str(run), "--evaluator", "perplexity", "--evaluator", "efficiency",
                    "--eval-file", str(text_file), "--seq-len", "16", "--device", "cpu",
                    "--efficiency.repeats", "1", "--efficiency.generate_tokens", "2",
                    "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    assert "pgprune pruned model" in result.stdout
    assert "perplexity notes (seq 16)" in result.stdout and "size on disk" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/dir"], "no such model or run directory"),
        (["{model}", "--evaluator", "nosuch"], "unknown evaluator 'nosuch'"),
        (["{model}", "--evaluator", "perplexity", "--efficiency.repeats", "2"],
         "option of evaluator 'efficiency', which is not selected"),
        (["{model}", "--evaluator", "perplexity", "--perplexity.windows", "2"],
         "--perplexity.windows: unknown option"),
        (["{model}", "--evaluator", "perplexity", "--eval-file", "/no/file.jsonl"],
         "evaluation file not found"),
    ],
)
def test_user_errors_exit_2_with_one_line(model_dir, args, message):
    result = invoke("eval", *[a.format(model=model_dir) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_eval_refuses_to_overwrite_a_runs_metrics(model_dir, text_file, tmp_path):
    """``--out`` pointing at a run directory would replace the run's own metrics.json."""
    from pgprune_core.run.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.marker.write_text('{"format": "pgprune-run/1"}')
    result = invoke("eval", str(model_dir), "--evaluator", "perplexity", "--eval-file",
                    str(text_file), "--out", str(run.path))
    assert result.exit_code == 2, result.output
    assert "holds a pgprune run" in result.output and not run.metrics.exists()
