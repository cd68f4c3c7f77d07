"""Data-parallel runs under torchrun (gloo, 2 processes on the CPU) equal one-process runs.

A K-process step is the one-process step with its forward rows split over the ranks
(docs/scaling.md), so the masks, losses and gradients must be those of one process: bit for
bit where the ranks compute the same rows in the same chunks (``training.max_rows``), within
float32 rounding where the ranks sum statistics (the initializers' all-reduce).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pgprune_core.parallel import SINGLE, Ranks, share
from pgprune_core.testing import save_run_assets, save_tiny_model, wait_for_step

WORKER = Path(__file__).parent / "fixtures" / "ranks_worker.py"
TIMEOUT = 240


def test_shares_partition_the_rows_in_order_and_differ_by_at_most_one():
    for n in range(0, 23):
        for world in range(1, 6):
            parts = [share(n, r, world) for r in range(world)]
            rows = [i for part in parts for i in range(n)[part]]
            assert rows == list(range(n))
            sizes = [len(range(n)[part]) for part in parts]
            assert max(sizes) - min(sizes) <= 1


def test_one_process_collectives_are_the_identity():
    x = torch.arange(6.0).reshape(3, 2)
    assert SINGLE.gather_rows(x, 3) is x and SINGLE.all_reduce_sum(x) is x
    assert SINGLE.broadcast({"a": 1}) == {"a": 1} and SINGLE.any(True) and not SINGLE.any(False)
    assert SINGLE.on_main(lambda: 5, "five") == 5
    assert SINGLE.launch("pgprune resume x") == "pgprune resume x"
    assert "--nproc-per-node 4" in Ranks(rank=1, world_size=8, local_world_size=4).launch(
        "pgprune resume x")


def _torchrun(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={n}", *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_oracle_and_initializers_under_torchrun_equal_one_process(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    for cmd, out in (([sys.executable, str(WORKER)], one), (_torchrun(2, str(WORKER)), two)):
        done = subprocess.run([*cmd, str(model), str(out)], capture_output=True, text=True,
                              env=_env(), timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr[-3000:]
    single, double = torch.load(one), torch.load(two)
    assert (single.pop("world_size"), double.pop("world_size")) == (1, 2)
    assert single.keys() == double.keys()
    for key, value in single.items():
        if "/init/" in key and key not in ("layer/init/layerwise-ppl",):
            # sums of per-rank statistics: the same numbers, added in another order
            torch.testing.assert_close(double[key], value, rtol=1e-5, atol=1e-7, msg=key)
        else:  # the oracle's rows (and layerwise-ppl, which only calls it): bit for bit
            assert torch.equal(double[key], value), key


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    return save_run_assets(tmp_path_factory.mktemp("assets"), calib_chars=30000, eval_chars=30000)


def _run_args(assets, out: Path, *extra: str) -> list[str]:
    return [
        "-m", "pgprune_core", "run", "--model", str(assets["model"]),
        "--calib-file", str(assets["calib"]), "--eval-file", str(assets["eval"]),
        "--data.eval", "[]", "--seq-len", "32", "--batch-size", "2", "--out", str(out),
        "--training.log_every", "1", "--estimator.lr", "0.05",
        "--estimator.scale_lr_to_steps", "false", "--evaluator", "perplexity",
        "--evaluation.seq_len", "32", "--data.cache_dir", str(assets["root"] / "cache"),
        # N_s x batch = 4 rows: 2 per rank; the one-process run takes the same chunks
        "--training.max_rows", "2", "--training.threads", "1", *extra,
    ]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _masks(run: Path) -> dict:
    return json.loads((run / "masks.json").read_text())


def _keep(run: Path) -> dict:
    return {kind: part["keep"] for kind, part in _masks(run)["kinds"].items()}


@pytest.mark.slow
def test_torchrun_run_equals_one_process_and_rank_0_alone_writes(assets, tmp_path):
    extra = ("--steps", "10", "--init", "wanda-sp", "--init.n_sequences", "6",
             "--init.seq_len", "32")
    one = subprocess.run([sys.executable, *_run_args(assets, tmp_path / "one", *extra)],
                         capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(_torchrun(2, *_run_args(assets, tmp_path / "two", *extra)),
                         capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    assert two.returncode == 0, two.stderr[-3000:]
    # rank 0 alone reports: one summary, one progress line per phase
    said = two.stdout + two.stderr  # the reporter writes its messages to stderr
    assert said.count("done: ") == 1 and said.count("evaluating the dense") == 1
    log_one, log_two = _log(tmp_path / "one"), _log(tmp_path / "two")
    keys = ("step", "loss", "baseline", "expected_kept", "forward_passes")
    # wanda-sp's statistics are summed over the ranks: the probabilities may differ in the
    # last float32 bits, the sampled masks and the losses not at all
    assert [{k: r[k] for k in keys if k != "expected_kept"} for r in log_two] == \
        [{k: r[k] for k in keys if k != "expected_kept"} for r in log_one]
    for a, b in zip(log_one, log_two, strict=True):
        assert b["expected_kept"] == pytest.approx(a["expected_kept"], abs=1e-6)
    assert _keep(tmp_path / "two") == _keep(tmp_path / "one")
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["run"]["world_size"] == 2 and metrics["run"]["steps"] == 10


@pytest.mark.slow
def test_torchrun_interrupt_and_resume_with_another_world_size(assets, tmp_path):
    steps = ("--steps", "60", "--init", "random", "--training.checkpoint_every", "5")
    reference = subprocess.run([sys.executable, *_run_args(assets, tmp_path / "ref", *steps)],
                               capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "run"
    proc = subprocess.Popen(_torchrun(2, *_run_args(assets, out, *steps)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    wait_for_step(out, 8, proc, TIMEOUT)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "continue with: torchrun" in stderr and " resume " in stderr, stderr[-3000:]
    assert (out / "policy.pt").exists() and not (out / "metrics.json").exists()
    # continued by one process: the definition of a step does not involve the world size
    resumed = subprocess.run([sys.executable, "-m", "pgprune_core", "resume", str(out)],
                             capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = _log(out)
    assert [r["step"] for r in log] == list(range(1, 61))
    assert [r["loss"] for r in log] == [r["loss"] for r in _log(tmp_path / "ref")]
    assert _masks(out) == _masks(tmp_path / "ref")


def _worker_pids(torchrun_pid: int) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun started."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            ppid = int(next(line for line in status.splitlines() if line.startswith("PPid:"))
                       .split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration):
            continue
        if ppid == torchrun_pid:
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(entry.name)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes in /proc")
def test_a_rank_that_dies_ends_the_run_with_a_resumable_checkpoint(assets, tmp_path):
    steps = ("--steps", "400", "--init", "random", "--training.checkpoint_every", "5",
             "--training.collective_timeout_s", "30")
    out = tmp_path / "run"
    proc = subprocess.Popen(_torchrun(2, *_run_args(assets, out, *steps)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    wait_for_step(out, 6, proc, TIMEOUT)
    os.kill(_worker_pids(proc.pid)[1], signal.SIGKILL)
    started = time.time()
    _, stderr = proc.communicate(timeout=TIMEOUT)  # no hang
    assert proc.returncode != 0 and time.time() - started < 120
    assert not (out / "metrics.json").exists()
    marker = json.loads((out / "run.json").read_text())
    assert marker["status"] in ("failed", "interrupted"), marker
    assert "continue with: torchrun" in stderr and " resume " in stderr, stderr[-3000:]
    resumed = subprocess.run([sys.executable, "-m", "pgprune_core", "resume", str(out)],
                             capture_output=True, text=True, env=_env(), timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in _log(out)] == list(range(1, 401))
