"""Peak memory of a block of code, on GPU or CPU.

The paper reports the GPU memory of pruning (App. A.5, Table A1) and of inference with the
pruned model (Table A2), so both the run pipeline (``run.peak_memory_bytes``) and the
``efficiency`` evaluator measure it, through this one class::

    with PeakMemory(device) as pm:
        model(batch)
    pm.peak_bytes

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` — memory
  held by tensors (what the paper's tables count), not the allocator's reserved pool.
- CPU (and MPS): the process's resident set size, sampled from ``/proc/self/statm`` by a
  background thread.  RSS counts everything the process holds (weights, Python, libraries),
  which is the honest number for "how much RAM does this need".  Where ``/proc`` does not
  exist, the peak comes from ``resource.getrusage``, which is the lifetime peak of the
  process (it cannot be reset); :attr:`PeakMemory.method` says which was used.

A model spread over devices (``model.device_map``) is measured by :class:`DevicePeaks`: one
:class:`PeakMemory` per CUDA device that holds or computes its weights, and the process's
RSS under ``"cpu"`` (where offloaded weights wait), in one block::

    with DevicePeaks(["cuda:0", "cuda:1"]) as peaks:
        model(batch)
    peaks.peak_bytes          # {"cpu": ..., "cuda:0": ..., "cuda:1": ...}
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import torch

_STATM = Path("/proc/self/statm")


def current_rss_bytes() -> int | None:
    """Resident set size of this process now, or None where ``/proc`` is unavailable."""
    try:
        fields = _STATM.read_text().split()
    except OSError:
        return None
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def lifetime_peak_rss_bytes() -> int:
    """Peak RSS of this process since it started (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class PeakMemory:
    """Context manager measuring the peak memory while its block runs.

    Attributes after the block: ``peak_bytes`` (the peak, absolute: includes what was
    already allocated when the block started), ``start_bytes`` (allocated at entry) and
    ``method`` (``"cuda"``, ``"rss-sampled"`` or ``"rss-lifetime"``).
    """

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.005) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.start_bytes = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def delta_bytes(self) -> int:
        """How far the peak rose above what was allocated at entry."""
        return max(0, self.peak_bytes - self.start_bytes)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            self.method = "cuda"
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            return self
        rss = current_rss_bytes()
        if rss is None:
            self.method = "rss-lifetime"
            self.start_bytes = lifetime_peak_rss_bytes()
            return self
        self.method = "rss-sampled"
        self.start_bytes = self.peak_bytes = rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="pgprune-peak-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = current_rss_bytes()
            if rss is not None and rss > self.peak_bytes:
                self.peak_bytes = rss

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.method == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        if self.method == "rss-lifetime":
            self.peak_bytes = lifetime_peak_rss_bytes()
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        rss = current_rss_bytes()  # the block's last state, in case it ended between samples
        if rss is not None:
            self.peak_bytes = max(self.peak_bytes, rss)


def device_key(device: torch.device | str) -> str:
    """The name a device's peak is reported under: ``cuda:N`` (the current device for a
    bare ``cuda``), else ``cpu`` (MPS and the CPU are measured as the process's RSS)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    index = torch.cuda.current_device() if device.index is None else device.index
    return f"cuda:{index}"


class DevicePeaks:
    """Peak memory of a block on several devices at once: every CUDA device among
    ``devices`` (tensors allocated, as :class:`PeakMemory` measures one) and, always, the
    process's RSS under ``"cpu"``."""

    def __init__(self, devices: Iterable[torch.device | str] = (), interval_s: float = 0.005) -> None:
        cuda = sorted({device_key(d) for d in devices if torch.device(d).type == "cuda"},
                      key=lambda key: int(key.partition(":")[2]))
        self.meters = {key: PeakMemory(key, interval_s) for key in ["cpu", *cuda]}
        self._stack: contextlib.ExitStack | None = None

    def meter(self, device: torch.device | str) -> PeakMemory:
        """The measurement of one device (``cpu``: the RSS one)."""
        return self.meters[device_key(device)]

    @property
    def peak_bytes(self) -> dict[str, int]:
        return {key: int(meter.peak_bytes) for key, meter in self.meters.items()}

    def __enter__(self) -> DevicePeaks:
        with contextlib.ExitStack() as stack:
            for meter in self.meters.values():
                stack.enter_context(meter)
            self._stack = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            self._stack.__exit__(exc_type, exc, tb)
            self._stack = None
