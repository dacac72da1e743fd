"""How much of the CPU other processes took while the benchmarks ran (Linux /proc/stat)."""

from __future__ import annotations

import os
import time


class OtherLoad:
    """How much of the CPU other processes took while we measured (Linux; None elsewhere).

    On a machine whose cores are shared, a parallel call waits for its descheduled OpenMP
    threads: a pass of microseconds can take a scheduler time slice (milliseconds). The CPU
    time of the whole machine (/proc/stat, steal included) minus our own tells if that happened.
    """

    def __init__(self):
        self._start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = stat.readline().split()[1:]
            ticks = os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, AttributeError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        machine_busy = (user + nice + system + irq + softirq + steal) / ticks
        own = os.times()
        return time.perf_counter(), machine_busy, own.user + own.system

    def fraction(self):
        """Share of all cores' time used by others since construction, or None if unknown."""
        end = self._sample()
        if self._start is None or end is None:
            return None
        wall = end[0] - self._start[0]
        others = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return max(0.0, others) / (wall * (os.cpu_count() or 1)) if wall > 0 else None

    def warning(self, threshold=0.05):
        share = self.fraction()
        if share is None or share < threshold:
            return None
        return (f"warning: other processes used {100 * share:.0f}% of the CPU during the run; "
                "timings are noisy (parallel calls wait for descheduled threads: rerun on a "
                "quiet machine, or with OMP_WAIT_POLICY=passive)")
