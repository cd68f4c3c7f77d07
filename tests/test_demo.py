"""The embedded demo: corpus split, cached deterministic build, demo data and run defaults.

Builds use the ``tiny`` recipe (same code path as ``demo``, a second of training) in a
temporary cache; the real recipe's constants are checked against ``docs/demo.md``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from pgprune_core.config.resolve import resolve_config
from pgprune_core.demo import (
    DEMO,
    DEMO_STEPS,
    TINY,
    apply_demo_defaults,
    default_recipe,
    demo_corpus,
    demo_data,
    demo_model_path,
    ensure_demo_model,
    split_topics,
)
from pgprune_core.demo import build as build_module
from pgprune_core.demo.__main__ import compare
from pgprune_core.demo.__main__ import main as demo_main
from pgprune_core.demo.cache import PROVENANCE, file_hashes, read_provenance, sha256_file
from pgprune_core.demo.recipe import RECIPE_ENV
from pgprune_core.errors import ConfigError
from pgprune_core.report.progress import SilentReporter

DOCS = Path(__file__).resolve().parents[1] / "docs" / "demo.md"


# -- the corpus split ------------------------------------------------------------------------


def test_split_follows_the_deficit_rule_on_a_worked_example():
    # ten equal topics: the walk of docs/demo.md gives train 8, calibration 1, evaluation 1
    topics = {f"t{i}": "x" * 100 for i in range(10)}
    split = split_topics(topics)
    assert split.parts["calibration"] == ("t3",)
    assert split.parts["evaluation"] == ("t6",)
    assert split.parts["train"] == ("t0", "t1", "t2", "t4", "t5", "t7", "t8", "t9")


def test_split_depends_on_keys_and_texts_not_on_dict_order():
    topics = {f"k{i:02d}": "word " * (10 + 7 * i) for i in range(30)}
    reversed_topics = dict(reversed(list(topics.items())))
    assert split_topics(topics) == split_topics(reversed_topics)
    changed = dict(topics, k05="other text")
    assert split_topics(changed).sha256 != split_topics(topics).sha256


def test_python_help_topics_split_into_three_disjoint_parts_near_their_shares():
    corpus = demo_corpus()
    parts = corpus.parts
    keys = [set(parts["train"]), set(parts["calibration"]), set(parts["evaluation"])]
    assert all(keys)
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert keys[0] | keys[1] | keys[2] == set(corpus.topics)
    total = sum(len(t) for t in corpus.topics.values())
    largest = max(len(t) for t in corpus.topics.values())
    for part, share in (("train", 0.8), ("calibration", 0.1), ("evaluation", 0.1)):
        chars = sum(len(corpus.topics[k]) for k in parts[part])
        assert abs(chars - share * total) <= largest
    again = demo_corpus()
    assert again.parts == corpus.parts and again.sha256 == corpus.sha256


# -- the build and its cache -------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny demo model in a module-wide cache: (cache dir, model dir)."""
    cache = tmp_path_factory.mktemp("demo-cache")
    return cache, ensure_demo_model(cache_dir=cache, recipe=TINY)


def test_build_is_a_loadable_llama_with_its_tokenizer_and_provenance(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, path = built
    assert path.parent == cache and path.name.startswith(TINY.name + "-")
    assert path == demo_model_path(cache, TINY)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == TINY.num_layers
    assert model.config.hidden_size == TINY.hidden_size
    ids = tokenizer("def f(x): return x")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == model.config.bos_token_id
    assert tokenizer.eos_token == "</s>" and tokenizer.eos_token_id == model.config.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "def f(x): return x"
    provenance = json.loads((path / PROVENANCE).read_text())
    assert provenance["files"]["model.safetensors"] == sha256_file(path / "model.safetensors")
    assert provenance["recipe"] == TINY.as_dict()
    assert provenance["corpus"]["topics"]["evaluation"] == list(demo_corpus().parts["evaluation"])
    assert provenance["training"]["final_loss"] > 0
    assert provenance["evaluation"]["perplexity"] > 1


def test_second_call_reuses_the_cache_without_building(built, monkeypatch):
    cache, path = built

    def refuse(*args, **kwargs):
        raise AssertionError("an intact cache must not be rebuilt")

    monkeypatch.setattr(build_module, "build_demo_model", refuse)
    assert ensure_demo_model(cache_dir=cache, recipe=TINY) == path


def _damage(entry: Path, how: str) -> None:
    weights = entry / "model.safetensors"
    if how == "truncate-weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "flip-a-weight-byte":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "delete-tokenizer":
        (entry / "tokenizer.json").unlink()
    elif how == "delete-provenance":
        (entry / PROVENANCE).unlink()
    else:
        (entry / PROVENANCE).write_text("{not json")


@pytest.mark.parametrize("how", ["truncate-weights", "flip-a-weight-byte", "delete-tokenizer",
                                 "delete-provenance", "garble-provenance"])
def test_damaged_entries_are_not_trusted(built, tmp_path, how):
    _, original = built
    entry = tmp_path / original.name
    shutil.copytree(original, entry)
    assert read_provenance(entry) is not None
    _damage(entry, how)
    assert read_provenance(entry) is None


def test_a_corrupt_cache_is_rebuilt_to_the_same_bytes(built, tmp_path):
    _, original = built
    entry = tmp_path / original.name
    shutil.copytree(original, entry)
    _damage(entry, "flip-a-weight-byte")
    assert ensure_demo_model(cache_dir=tmp_path, recipe=TINY) == entry
    assert read_provenance(entry) is not None
    # two builds on one machine give byte-identical files
    assert file_hashes(entry) == file_hashes(original)
    assert not compare(original, entry)


def test_an_interrupted_build_leaves_no_entry_and_its_leftovers_are_cleaned(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "train_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_model(cache_dir=tmp_path, recipe=TINY)
    target = demo_model_path(tmp_path, TINY)
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]
    # a SIGKILLed build cannot clean up; the next build removes what it left
    stale = tmp_path / f".{target.name}.abc123.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    monkeypatch.undo()
    assert ensure_demo_model(cache_dir=tmp_path, recipe=TINY) == target
    assert not stale.exists()


def test_build_reports_training_progress_and_restores_the_callers_torch_state(tmp_path):
    tracked: list[tuple[int | None, str, int]] = []

    class Recorder(SilentReporter):
        def track(self, items, total, description):
            items = list(items)
            tracked.append((total, description, len(items)))
            return iter(items)

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_module.build_demo_model(tmp_path, TINY, demo_corpus(), Recorder())
    assert tracked == [(TINY.steps, "training the demo model", TINY.steps)]
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_check_command_confirms_byte_identity(built, capsys):
    cache, _ = built
    assert demo_main(["--cache-dir", str(cache), "--recipe", "tiny", "--check"]) == 0
    assert "byte-identical" in capsys.readouterr().out


def test_recipe_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(RECIPE_ENV, raising=False)
    assert default_recipe() is DEMO
    monkeypatch.setenv(RECIPE_ENV, "tiny")
    assert default_recipe() is TINY
    monkeypatch.setenv(RECIPE_ENV, "huge")
    with pytest.raises(ConfigError, match="PGPRUNE_DEMO_RECIPE"):
        default_recipe()


def _documented_recipe() -> dict[str, str]:
    text = DOCS.read_text(encoding="utf-8")
    table = text.split("<!-- recipe table -->")[1]
    return dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", table, flags=re.MULTILINE))


def test_the_real_recipe_is_what_the_docs_say():
    documented = _documented_recipe()
    actual = {key: str(value) for key, value in DEMO.as_dict().items()}
    assert documented == actual
    assert f"`{DEMO_STEPS}`" in DOCS.read_text(encoding="utf-8")


# -- demo data ----------------------------------------------------------------------------------


def _records(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_demo_data_are_the_calibration_and_evaluation_topics_one_record_each(tmp_path):
    calibration, evaluation = demo_data(tmp_path)
    corpus = demo_corpus()
    for path, part in ((calibration, "calibration"), (evaluation, "evaluation")):
        records = _records(path)
        assert [r["topic"] for r in records] == list(corpus.parts[part])
        assert [r["text"] for r in records] == corpus.documents(part)
        assert not {r["topic"] for r in records} & set(corpus.parts["train"])
    # written once; a damaged file is rewritten
    before = calibration.stat().st_mtime_ns
    assert demo_data(tmp_path) == (calibration, evaluation)
    assert calibration.stat().st_mtime_ns == before
    evaluation.write_text("tampered")
    demo_data(tmp_path)
    assert [r["text"] for r in _records(evaluation)] == corpus.documents("evaluation")


def test_pgprune_reads_the_demo_data_one_topic_per_document(tmp_path):
    from pgprune_core.data import calibration_source, eval_sources

    demo = apply_demo_defaults(resolve_config(), cache_dir=tmp_path)
    corpus = demo_corpus()
    assert calibration_source(demo.data).texts() == corpus.documents("calibration")
    (name, source), = eval_sources(demo.data).items()
    assert name == "pydoc-eval"
    assert source.texts() == corpus.documents("evaluation")


# -- run defaults ------------------------------------------------------------------------------


def test_a_named_model_keeps_its_config_untouched(tmp_path):
    config = resolve_config(overrides={"model.name_or_path": "some/model"})
    assert apply_demo_defaults(config, cache_dir=tmp_path) is config
    assert not list(tmp_path.iterdir())


def test_demo_defaults_fill_data_steps_and_context(tmp_path, monkeypatch):
    monkeypatch.delenv(RECIPE_ENV, raising=False)
    config = resolve_config()
    assert config.init.name == "wanda-sp" and config.init.seq_len > DEMO.seq_len
    demo = apply_demo_defaults(config, cache_dir=tmp_path)
    calibration, evaluation = demo_data(tmp_path)
    assert demo.data.calib_file == str(calibration)
    assert demo.data.eval == []
    assert demo.data.eval_files == [str(evaluation)]
    assert demo.training.steps == DEMO_STEPS
    # no sequence longer than the demo model was trained on
    assert demo.init.seq_len == demo.data.seq_len == demo.evaluation.seq_len == DEMO.seq_len
    # a copy: the caller's config is unchanged
    assert config.data.calib_file is None and config.training.steps is None
    assert config.data.eval == ["wikitext2"]
    # idempotent, and what it filled counts as set (config.yaml records it for resume)
    assert apply_demo_defaults(demo, cache_dir=tmp_path).model_dump() == demo.model_dump()
    assert {"calib_file", "eval", "eval_files"} <= demo.data.model_fields_set
    # the context is the recipe's: the tiny test recipe has a shorter one
    monkeypatch.setenv(RECIPE_ENV, "tiny")
    assert apply_demo_defaults(config, cache_dir=tmp_path).init.seq_len == TINY.seq_len


def test_demo_runs_single_threaded_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert apply_demo_defaults(resolve_config(), cache_dir=tmp_path).training.threads == 1
    chosen = resolve_config(None, None, {"training.threads": 2})
    assert apply_demo_defaults(chosen, cache_dir=tmp_path).training.threads == 2
    named = resolve_config(None, None, {"model.name_or_path": "some/model"})
    assert apply_demo_defaults(named, cache_dir=tmp_path).training.threads is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the environment's choice is respected
    assert apply_demo_defaults(resolve_config(), cache_dir=tmp_path).training.threads is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"data.calib": "wikitext2"}, {"data.calib_file": None, "data.calib": "wikitext2"}),
        ({"data.calib": "c4"}, {"data.calib_file": None, "data.calib": "c4"}),
        ({"data.calib_file": "mine.txt"}, {"data.calib_file": "mine.txt"}),
        ({"data.eval": ["wikitext2"]}, {"data.eval": ["wikitext2"], "data.eval_files": "DEMO"}),
        ({"data.eval_files": ["mine.txt"]}, {"data.eval": [], "data.eval_files": ["mine.txt"]}),
        ({"training.steps": 7}, {"training.steps": 7}),
        ({"training.epochs": 0.5}, {"training.steps": None, "training.epochs": 0.5}),
        ({"init.seq_len": 512}, {"init.seq_len": 512}),
        ({"evaluation.seq_len": 256}, {"evaluation.seq_len": 256}),
        ({"init.name": "magnitude"}, {"init.name": "magnitude", "training.steps": DEMO_STEPS}),
    ],
)
def test_demo_defaults_leave_what_the_user_set(tmp_path, overrides, expected):
    demo = apply_demo_defaults(resolve_config(overrides=overrides), cache_dir=tmp_path)
    _, evaluation = demo_data(tmp_path)
    for dotted, value in expected.items():
        section, key = dotted.split(".")
        if value == "DEMO":
            value = [str(evaluation)]
        assert getattr(getattr(demo, section), key) == value, dotted


@pytest.mark.slow
def test_pgprune_run_without_a_model_prunes_the_demo_model_offline(tmp_path, monkeypatch):
    from pgprune_core.config.resolve import load_config_file
    from pgprune_core.run.pipeline import run_pipeline

    monkeypatch.setenv(RECIPE_ENV, "tiny")
    monkeypatch.setenv("PGPRUNE_CACHE", str(tmp_path / "cache"))
    config = resolve_config(overrides={
        "training.steps": 2, "evaluation.evaluators": ["perplexity"],
        "output.dir": str(tmp_path / "run"),
    })
    result = run_pipeline(config)
    calibration, evaluation = demo_data(tmp_path / "cache")
    assert set(result.metrics["dense"]["ppl"]) == {"pydoc-eval"}
    assert result.metrics["run"]["steps"] == 2
    assert result.metrics["pruned"]["params"] < result.metrics["dense"]["params"]
    recorded = load_config_file(result.run_dir / "config.yaml")
    assert recorded["data"]["calib_file"] == str(calibration)
    assert recorded["data"]["eval_files"] == [str(evaluation)]
    assert recorded["init"]["seq_len"] == TINY.seq_len
    assert demo_model_path(tmp_path / "cache", TINY).is_dir()
