"""The lm-eval evaluator, offline: a local 12-question task on a tiny in-process model,
checked against an independent log-likelihood computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pgprune_core.errors import ConfigError
from pgprune_core.interfaces import EvalContext
from pgprune_core.plugin.registry import get_registry
from pgprune_core.testing import tiny_model, tiny_tokenizer

TASKS = Path(__file__).parent / "tasks"


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch, tmp_path):
    """Run in the task folder (its YAML names the data file relatively), keep ``datasets``'
    cache in a temporary directory, and use one intra-op thread (shared CPU)."""
    import datasets.config

    monkeypatch.chdir(TASKS)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _evaluator(**options):
    cls = get_registry().cls("evaluator", "lm-eval")
    return cls(cls.Config(include_path=[str(TASKS)], include_defaults=False, **options))


def _reference(model, tokenizer) -> dict[str, float]:
    """acc / acc_norm computed directly: sum of log p(" " + choice | question prompt),
    the choice with the highest sum (acc) or per-byte sum (acc_norm) wins."""
    docs = [json.loads(line) for line in (TASKS / "tiny_arith.jsonl").read_text().splitlines()]
    hits = hits_norm = 0
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        context_ids = tokenizer(context)["input_ids"]
        scores, normed = [], []
        for choice in doc["choices"]:
            whole = tokenizer(context + " " + choice)["input_ids"]
            ids = torch.tensor([whole])
            with torch.no_grad():
                logprobs = model(input_ids=ids).logits[0].log_softmax(-1)
            total = sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context_ids), len(whole)))
            scores.append(total)
            normed.append(total / len((" " + choice).encode()))
        hits += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
        hits_norm += int(max(range(len(normed)), key=normed.__getitem__) == doc["label"])
    return {"acc": hits / len(docs), "acc_norm": hits_norm / len(docs)}


def test_registered_through_the_entry_point():
    spec = get_registry().get("evaluator", "lm-eval")
    assert spec.origin.distribution == "pgprune-lm-eval"
    config = spec.cls.Config()
    assert config.tasks == ["piqa", "winogrande", "hellaswag", "arc_easy", "arc_challenge"]
    assert spec.cls.Config(tasks="piqa, arc_easy").tasks == ["piqa", "arc_easy"]


def test_local_task_matches_direct_loglikelihoods():
    model, tokenizer = tiny_model(seed=1), tiny_tokenizer()
    tokenizer.pad_token = None  # HFLM would set one: the caller's tokenizer must stay as it was
    ctx = EvalContext(model=model, tokenizer=tokenizer, device=torch.device("cpu"),
                      label="dense", batch_size=4)
    result = _evaluator(tasks=["tiny_arith"]).evaluate(ctx)
    expected = _reference(model, tokenizer)
    assert result["zero_shot"]["tiny_arith"]["acc"] == pytest.approx(expected["acc"])
    assert result["zero_shot"]["tiny_arith"]["acc_norm"] == pytest.approx(expected["acc_norm"])
    assert result["zero_shot_average"] == pytest.approx(expected["acc"])
    assert result["zero_shot_settings"] == {"num_fewshot": 0, "limit": None, "average": "acc"}
    assert tokenizer.pad_token is None
    limited = _evaluator(tasks=["tiny_arith"], limit=4, average="acc_norm").evaluate(ctx)
    assert limited["zero_shot_average"] == limited["zero_shot"]["tiny_arith"]["acc_norm"]


def test_unknown_task_and_bad_path_are_config_errors(tmp_path):
    ctx = EvalContext(model=tiny_model(), tokenizer=tiny_tokenizer(), device=torch.device("cpu"),
                      label="dense")
    with pytest.raises(ConfigError, match="unknown lm-eval task 'tiny_arit'; did you mean tiny_arith"):
        _evaluator(tasks=["tiny_arit"]).evaluate(ctx)
    cls = get_registry().cls("evaluator", "lm-eval")
    with pytest.raises(ConfigError, match="not a directory"):
        cls(cls.Config(include_path=[str(tmp_path / "nope")])).evaluate(ctx)
