"""report.md from metrics.json: the dense-vs-pruned table, pruning and run sections."""

from __future__ import annotations

from pgprune_core.config.resolve import resolve_config
from pgprune_core.report.markdown import comparison_rows, render_report
from pgprune_core.run.rundir import RunDir

METRICS = {
    "dense": {
        "params": 6_840_000, "params_non_embedding": 4_740_000,
        "ppl": {"wikitext2": 150.63}, "ppl_tokens": {"wikitext2": 381_635}, "ppl_seq_len": 128,
        "zero_shot": {"piqa": {"acc": 0.6, "acc_norm": 0.61}}, "zero_shot_average": 0.6,
        "forward": {"batch_size": 1, "seq_len": 128, "latency_s": 0.02, "peak_memory_bytes": 2**30},
        "generation": {"batch_size": 1, "new_tokens": 32, "tokens_per_s": 200.0},
        "my_metric": 3.5,
    },
    "pruned": {
        "params": 4_788_000, "params_non_embedding": 2_688_000,
        "ppl": {"wikitext2": 186.7}, "ppl_seq_len": 128,
        "zero_shot": {"piqa": {"acc": 0.55, "acc_norm": 0.56}}, "zero_shot_average": 0.55,
        "forward": {"batch_size": 1, "seq_len": 128, "latency_s": 0.015, "peak_memory_bytes": 2**29},
        "disk_bytes": 19 * 2**20,
        "my_metric": 7.0,
    },
    "pruning": {"rate": 0.3, "budget": "per-type", "granularity": ["channel", "head"],
                "prunable_params_removed": 0.3, "units_kept": {"channel": 2890, "head": 34},
                "units_total": {"channel": 4128, "head": 48}},
    "run": {"steps": 1500, "forward_passes": 24000, "backward_passes": 0, "optimize_s": 405.2,
            "wall_s": 530.0, "peak_memory_bytes": 3 * 2**30, "peak_memory_method": "rss-sampled"},
}


def test_rows_cover_known_and_third_party_metrics():
    rows = {r.label: r for r in comparison_rows([METRICS["dense"], METRICS["pruned"]])}
    assert rows["parameters"].values == ["6,840,000", "4,788,000"]
    assert rows["parameters"].ratio == "0.700×"
    assert rows["perplexity wikitext2 (seq 128)"].values == ["150.63", "186.70"]
    assert rows["piqa acc (%)"].values == ["60.00", "55.00"]
    assert rows["forward latency (1×128)"].values == ["20.0 ms", "15.0 ms"]
    assert rows["size on disk"].values == ["–", "19.0 MiB"] and rows["size on disk"].ratio == ""
    assert rows["my_metric"].ratio == "2.000×"
    memory = rows["peak memory of a forward (1×128, process RSS)"]
    assert memory.values == ["1,024.0 MiB", "512.0 MiB"] and memory.ratio == ""
    on_gpu = [{**side, "forward": {**side["forward"], "memory_method": "cuda"}}
              for side in (METRICS["dense"], METRICS["pruned"])]
    gpu_rows = {r.label: r for r in comparison_rows(on_gpu)}
    assert gpu_rows["peak memory of a forward (1×128)"].ratio == "0.500×"
    assert "ppl_tokens" not in " ".join(rows)


def test_report_sections_and_images(tmp_path):
    config = resolve_config(None, {"data.calib_slice": "1800:2000", "estimator.name": "none"})
    (tmp_path / "sparsity.png").write_bytes(b"png")
    path = RunDir(tmp_path).write_report(METRICS, config)
    text = path.read_text()
    assert text.startswith("# pgprune report")
    assert "| metric | dense | pruned | pruned / dense |" in text
    assert "| perplexity wikitext2 (seq 128) | 150.63 | 186.70 | 1.239× |" in text
    assert "| channel units kept | 2,890 of 4,128 (70.0%) |" in text
    assert "| time in the optimisation loop | 6.8 min |" in text
    assert "c4 [1800:2000], random segments of 128 tokens" in text
    assert "![pruned fraction per layer](sparsity.png)" in text
    assert "loss.png" not in text


def test_single_side_report_has_no_ratio_column():
    text = render_report({"pruned": {"params": 10, "ppl": {"x": 2.0}}})
    assert "| metric | pruned |" in text and "pruned / dense" not in text


def test_peak_memory_per_device_rows_where_a_model_spans_devices():
    by_device = {"dense": {"cpu": 3 * 2**30, "cuda:0": 2**30, "cuda:1": 2**29},
                 "pruned": {"cpu": 3 * 2**30, "cuda:0": 2**29, "cuda:1": 2**28}}
    sides = [{**METRICS[side], "forward": {**METRICS[side]["forward"], "memory_method": "cuda",
                                           "peak_memory_by_device": by_device[side]}}
             for side in ("dense", "pruned")]
    rows = {r.label: r for r in comparison_rows(sides)}
    assert rows["peak memory of a forward on cuda:1"].values == ["512.0 MiB", "256.0 MiB"]
    assert rows["peak memory of a forward on cuda:1"].ratio == "0.500×"
    cpu = rows["peak memory of a forward on cpu, process RSS"]
    assert cpu.values == ["3,072.0 MiB", "3,072.0 MiB"] and cpu.ratio == ""
    # one device: no per-device rows (they would repeat the main one)
    single = [{**side, "forward": {**side["forward"], "peak_memory_by_device": {"cpu": 1}}}
              for side in sides]
    assert not [r for r in comparison_rows(single) if "forward on" in r.label]
    run = {**METRICS["run"], "peak_memory_by_device": {"cpu": 2**30, "cuda:0": 2**31}}
    text = render_report({**METRICS, "run": run})
    assert "| peak memory on cuda:0 | 2.00 GiB |" in text
    assert "| peak memory on cpu (process RSS) | 1.00 GiB |" in text
