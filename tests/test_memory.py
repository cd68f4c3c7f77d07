"""PeakMemory sees an allocation made (and freed) inside its block; DevicePeaks measures
every device a model uses at once."""

from __future__ import annotations

import time

import pytest
import torch

from pgprune_core.evaluation.memory import DevicePeaks, PeakMemory, current_rss_bytes, device_key


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


def test_device_peaks_on_cpu_has_the_rss_entry_only():
    with DevicePeaks(["cpu", torch.device("cpu")]) as peaks:
        block = torch.ones(8 * 2**20 // 4)
        del block
    assert list(peaks.peak_bytes) == ["cpu"]
    assert peaks.meter("cpu") is peaks.meters["cpu"]
    assert peaks.peak_bytes["cpu"] == peaks.meter("cpu").peak_bytes > 0


class FakeCuda:
    """Per-device allocator counters standing in for ``torch.cuda``'s."""

    def __init__(self) -> None:
        self.allocated = {0: 100, 1: 10}
        self.peak = {0: 100, 1: 10}
        self.resets: list[int] = []

    @staticmethod
    def index(device) -> int:
        return torch.device(device).index

    def reset_peak_memory_stats(self, device) -> None:
        self.resets.append(self.index(device))
        self.peak[self.index(device)] = self.allocated[self.index(device)]

    def memory_allocated(self, device) -> int:
        return self.allocated[self.index(device)]

    def max_memory_allocated(self, device) -> int:
        return self.peak[self.index(device)]

    def allocate(self, index: int, size: int) -> None:
        self.allocated[index] += size
        self.peak[index] = max(self.peak[index], self.allocated[index])
        self.allocated[index] -= size


def test_device_peaks_reports_each_cuda_device_and_the_cpu(monkeypatch):
    fake = FakeCuda()
    for name in ("reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert device_key("cuda") == "cuda:1" and device_key("mps") == "cpu"
    with DevicePeaks(["cuda:1", "cpu", torch.device("cuda", 0), "cuda:1"]) as peaks:
        fake.allocate(0, 5000)
        fake.allocate(1, 70)
    assert sorted(fake.resets) == [0, 1]
    result = peaks.peak_bytes
    assert list(result) == ["cpu", "cuda:0", "cuda:1"]
    assert result["cuda:0"] == 5100 and result["cuda:1"] == 80
    assert peaks.meter("cuda:0").method == "cuda" and peaks.meter("cuda:0").delta_bytes == 5000
    assert peaks.meter("cpu").method.startswith("rss") and result["cpu"] > 0
