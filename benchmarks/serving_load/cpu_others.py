"""Who else used the server's CPUs during the load test: those CPUs' busy time (/proc/stat) less the
server's own CPU time (with its forward processes), and the time the hypervisor stole from them,
sampled every 0.5 s. A stall of the slowest light requests can then be told from the server's own
work: what else ran on its cores while they were open. Linux only; None elsewhere."""
from __future__ import annotations

import os
import time

from measures import cpu_s_of


def cpu_jiffies(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, steal) jiffies summed over `cpus`, from /proc/stat; None without it."""
    try:
        with open("/proc/stat") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    busy = steal = 0
    for line in lines:
        name, *fields = line.split()
        if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus:
            f = [int(x) for x in fields]
            busy += f[0] + f[1] + f[2] + f[5] + f[6]   # user, nice, system, irq, softirq
            steal += f[7]
    return busy, steal


class CpuOthers:
    """Samples (time, busy and steal jiffies of `cpus`, the server's CPU seconds) on each sample()."""

    def __init__(self, pid: int, cpus):
        self.pid, self.cpus, self.samples = pid, set(cpus), []
        self.hz = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        jiffies, own = cpu_jiffies(self.cpus), cpu_s_of(self.pid)
        if jiffies is not None and own is not None:
            self.samples.append((time.time(), *jiffies, own))

    def intervals(self) -> list[tuple[float, float, float, float]]:
        """(start, end, others' share, steal's share) of the server's CPUs between two samples. The
        share is of all those CPUs' time; /proc counts in ticks (10 ms), so ~0.02 is noise."""
        out = []
        for (t0, b0, s0, own0), (t1, b1, s1, own1) in zip(self.samples, self.samples[1:]):
            span = (t1 - t0) * len(self.cpus)
            if span > 0:
                others = max(0.0, (b1 - b0) / self.hz - (own1 - own0))
                out.append((t0, t1, others / span, (s1 - s0) / self.hz / span))
        return out

    def summary(self, slowest: list[dict], judged: list[dict]) -> dict | None:
        """Others' and steal's share of the server's CPUs over the load, and the mean over the intervals
        each of the slowest 1% and each judged light request overlapped."""
        spans = self.intervals()
        if not spans:
            return None

        def mean_over(requests, k):
            seen = [s[k] for a in requests for s in spans if s[0] < a["t1"] and a["t0"] < s[1]]
            return round(sum(seen) / len(seen), 3) if seen else None
        total_s = self.samples[-1][0] - self.samples[0][0]   # the intervals' shares, weighted by length
        return {"others_share": round(sum(s[2] * (s[1] - s[0]) for s in spans) / total_s, 3),
                "steal_share": round(sum(s[3] * (s[1] - s[0]) for s in spans) / total_s, 3),
                "slowest_1pct": {"others": mean_over(slowest, 2), "steal": mean_over(slowest, 3)},
                "all": {"others": mean_over(judged, 2), "steal": mean_over(judged, 3)},
                "max_others_in_0.5s": round(max(s[2] for s in spans), 3)}
