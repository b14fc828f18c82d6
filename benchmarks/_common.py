"""What several benchmarks share: the peak-memory meter."""

from __future__ import annotations

from pathlib import Path

import torch


class PeakMemory:
    """Peak CUDA allocation, or on CPU the peak growth of the resident set (Linux's VmHWM, reset on entry).

    No sampling thread: one would compete with training for the GIL and skew the step times.
    """

    STATUS = Path("/proc/self/status")

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = float("nan")

    def _status_bytes(self, field: str) -> int:
        line = next(line for line in self.STATUS.read_text().splitlines() if line.startswith(field + ":"))
        return int(line.split()[1]) * 1024  # reported in kB

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        elif self.STATUS.is_file():
            Path("/proc/self/clear_refs").write_text("5")  # resets the high-water mark to the current RSS
            self._baseline = self._status_bytes("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._baseline
        elif self.STATUS.is_file():
            self.peak = self._status_bytes("VmHWM") - self._baseline
