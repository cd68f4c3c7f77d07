"""Perplexity matches an independent plain-transformers loop (tiny model and proxy model)."""

from __future__ import annotations

import math

import pytest
import torch

from pgprune_core.config.sections import DataSection
from pgprune_core.data.sources import file_source
from pgprune_core.errors import DataError
from pgprune_core.evaluation.perplexity import perplexity, windows_of
from pgprune_core.interfaces import EvalContext
from pgprune_core.plugin.registry import get_registry
from pgprune_core.report.progress import SilentReporter
from pgprune_core.testing import sample_text, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def reference_ppl(model, ids: torch.Tensor, seq_len: int) -> float:
    """The textbook loop: HF's own shifted loss, window by window, averaged over windows
    (every window predicts seq_len - 1 tokens, so this is the token mean)."""
    n = ids.numel() // seq_len
    losses = []
    with torch.no_grad():
        for i in range(n):
            window = ids[i * seq_len : (i + 1) * seq_len][None]
            losses.append(model(input_ids=window, labels=window).loss.item())
    return math.exp(sum(losses) / len(losses))


class RecordingReporter(SilentReporter):
    def __init__(self):
        self.tracked = []

    def track(self, items, total, description):
        self.tracked.append((description, total))
        return iter(items)


def test_matches_reference_loop_on_tiny_model(model, tokenizer):
    ids = torch.tensor(tokenizer(sample_text(8000))["input_ids"])
    ours = perplexity(model, ids, seq_len=32, batch_size=5)
    n = ids.numel() // 32
    assert ours.windows == n and ours.tokens == n * 31
    assert ours.ppl == pytest.approx(reference_ppl(model, ids, 32), rel=1e-5)
    assert perplexity(model, ids, seq_len=32, batch_size=1).ppl == pytest.approx(ours.ppl, rel=1e-6)
    assert ours.nll == pytest.approx(math.log(ours.ppl))


def test_windows_drop_the_tail_and_reject_short_text():
    w = windows_of(torch.arange(100), 32)
    assert w.shape == (3, 32) and w[2, 0] == 64
    assert windows_of(torch.arange(100), 32, max_windows=2).shape == (2, 32)
    with pytest.raises(DataError, match="has 20 tokens, fewer than one window of 32"):
        windows_of(torch.arange(20), 32)


def test_evaluator_joins_texts_and_reports_tokens(tmp_path, model, tokenizer):
    lines = [line for line in sample_text(6000).splitlines() if line.strip()]
    path = tmp_path / "toy.txt"
    path.write_text("\n".join(lines) + "\n")
    source = file_source(path, "evaluation", DataSection(cache_dir=str(tmp_path / "c")))
    cls = get_registry().cls("evaluator", "perplexity")
    reporter = RecordingReporter()
    ctx = EvalContext(model=model, tokenizer=tokenizer, device=torch.device("cpu"),
                      label="dense", datasets={"toy": source}, seq_len=32, batch_size=4,
                      reporter=reporter)
    result = cls(cls.Config()).evaluate(ctx)
    ids = torch.tensor(tokenizer("\n\n".join(lines))["input_ids"])
    assert set(result) == {"ppl", "ppl_tokens", "ppl_seq_len"}
    assert result["ppl"]["toy"] == pytest.approx(reference_ppl(model, ids, 32), rel=1e-5)
    assert result["ppl_tokens"]["toy"] == (ids.numel() // 32) * 31
    assert ("perplexity toy", math.ceil((ids.numel() // 32) / 4)) in reporter.tracked
    seq16 = cls(cls.Config(seq_len=16, max_windows=3)).evaluate(ctx)
    assert seq16["ppl_seq_len"] == 16 and seq16["ppl_tokens"]["toy"] == 3 * 15
    with pytest.raises(DataError, match="unknown evaluation set"):
        cls(cls.Config(sets=["wikitext2"])).evaluate(ctx)


@pytest.mark.shared
def test_proxy_model_matches_plain_transformers(shared_asset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = shared_asset("models", "proxy-llama-7m")
    wiki = shared_asset("data", "wikitext-2-raw", "wiki.test.raw")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    source = file_source(wiki, "evaluation", DataSection(cache_dir=str(tmp_path / "c")),
                         doc_slice="0:60")
    cls = get_registry().cls("evaluator", "perplexity")
    ctx = EvalContext(model=model, tokenizer=tokenizer, device=torch.device("cpu"),
                      label="dense", datasets={"wiki": source}, seq_len=128, batch_size=8)
    ours = cls(cls.Config()).evaluate(ctx)["ppl"]["wiki"]
    # independent: read the file with plain Python, join rows with blank lines
    rows = wiki.read_text(encoding="utf-8").splitlines()[:60]
    ids = tokenizer("\n\n".join(rows), return_tensors="pt").input_ids[0]
    assert ours == pytest.approx(reference_ppl(model, ids, 128), rel=1e-5)
    assert 50 < ours < 1000  # a trained model, not a random one (random: ~4096)
