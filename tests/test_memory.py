"""PeakMemory sees an allocation made (and freed) inside its block."""

from __future__ import annotations

import time

import pytest
import torch

from pgprune_core.evaluation.memory import PeakMemory, current_rss_bytes


@pytest.mark.skipif(current_rss_bytes() is None, reason="needs /proc/self/statm")
def test_cpu_peak_sees_transient_allocation():
    size = 96 * 2**20
    with PeakMemory("cpu", interval_s=0.002) as pm:
        block = torch.ones(size // 4, dtype=torch.float32)  # touched: really resident
        time.sleep(0.05)
        del block
    assert pm.method == "rss-sampled"
    assert pm.delta_bytes >= 0.8 * size, (pm.start_bytes, pm.peak_bytes)
    assert pm.peak_bytes >= pm.start_bytes > 0


def test_cpu_peak_without_allocation_is_small():
    with PeakMemory("cpu") as pm:
        sum(range(1000))
    assert pm.peak_bytes >= pm.start_bytes
    assert pm.delta_bytes < 32 * 2**20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_counts_tensor_bytes():
    device = torch.device("cuda")
    with PeakMemory(device) as pm:
        block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)
        del block
    assert pm.method == "cuda"
    assert pm.delta_bytes >= 64 * 2**20
