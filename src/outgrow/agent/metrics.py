"""Samples of the instance's cgroup (1 s, kept one hour) and the evadeOOM stall watch."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from outgrow.agent.cgroups import Cgroup
from outgrow.agentapi.models import MetricsSample
from outgrow.errors import OutgrowError

log = logging.getLogger("outgrow.agent")
METRICS_KEEP = 3600  # one hour of 1 s samples


class Sampler:
    def __init__(
        self,
        cgroup: Cgroup,
        interval: float = 1.0,
        on_sample: Callable[[MetricsSample], None] | None = None,
    ):
        self.cgroup = cgroup
        self.interval = interval
        self.on_sample = on_sample  # called with every recorded sample (the status file)
        self._samples: deque[MetricsSample] = deque(maxlen=METRICS_KEEP)
        self._last_cpu: tuple[float, int] | None = None

    def sample(self) -> MetricsSample | None:
        """One sample now (None: the cgroup is gone)."""
        if not self.cgroup.exists():
            return None
        m = self.cgroup.memory_stats()
        c = self.cgroup.cpu_stats()
        p = self.cgroup.pressure()
        now = time.time()
        used = 0.0
        if self._last_cpu is not None and now > self._last_cpu[0]:
            used = (c.usage_ns - self._last_cpu[1]) / 1e9 / (now - self._last_cpu[0])
        self._last_cpu = (now, c.usage_ns)
        return MetricsSample(
            t=now,
            mem_used_bytes=m.usage_bytes,
            mem_rss_bytes=m.rss_bytes,
            mem_cache_bytes=m.cache_bytes,
            mem_swap_bytes=m.swap_bytes,
            mem_limit_bytes=m.limit_bytes,
            cpu_used_vcpus=round(max(used, 0.0), 4),
            cpu_quota_vcpus=c.quota_vcpus,
            cpu_throttled_ns=c.throttled_ns,
            mem_pressure_some_avg10=p.some_avg10 if p else None,
            mem_pressure_full_avg10=p.full_avg10 if p else None,
            oom_stalled=m.oom_stalled,
            oom_kills=m.oom_kills,
        )

    def record(self) -> None:
        s = self.sample()
        if s is not None:
            self._samples.append(s)
            if self.on_sample is not None:
                self.on_sample(s)

    def since(self, t: float) -> list[MetricsSample]:
        return [s for s in list(self._samples) if s.t > t]

    def loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.record()
            except OutgrowError as exc:
                log.debug("sampling failed: %s", exc)


def watch_oom(
    cgroup: Cgroup,
    stop: threading.Event,
    on_stall: Callable[[], None],
    on_clear: Callable[[], None],
) -> None:
    """Notice an OOM stall at once (eventfd on v1) and report it; the tree stays stalled
    (never killed) until the control plane moves it to a bigger instance. ``on_clear`` is
    called while no stall is seen (the job got memory back, or it was moved)."""
    while not stop.is_set():
        if not cgroup.exists():
            stop.wait(0.5)
            continue
        try:
            with cgroup.oom_watch() as watch:
                while not stop.is_set():
                    if watch.wait(0.5):
                        on_stall()
                        stop.wait(0.1)
                    elif not cgroup.memory_stats().oom_stalled:
                        on_clear()
        except OutgrowError as exc:
            log.debug("oom watch: %s", exc)
            stop.wait(0.5)
