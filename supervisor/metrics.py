"""``GET /metrics``: the daemon's numbers in Prometheus' text format.

The exposition is ``prometheus_client``'s (a custom collector on a private registry, rendered by
``generate_latest``), imported at the first scrape, not at start-up: it costs ~20 ms of imports
that a daemon which is never scraped should not pay. What the daemon measures all the time is
plain counting here (:class:`Histogram`, :class:`Counts`), with no dependency.

=====================================  =========================================================
metric                                 meaning
=====================================  =========================================================
``tether_containers{state}``           containers by the state ``ps`` shows
``tether_container_restarts_total``    restarts of the containers that exist now (``ps``'s
                                       RESTARTS column summed)
``tether_task_exits_total``            ``task.exit`` events appended since this daemon started
``tether_events_total``                the last seq of the event log
``tether_log_fsync_seconds``           time to write and fdatasync one batch of the event log
``tether_subscribers``                 live ``events`` subscribers
``tether_shims``                       shims the daemon holds a link to
``tether_http_connections``            open connections of the HTTP server
``tether_build_info{version}``         1, labelled with the daemon's version
=====================================  =========================================================
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BUCKETS", "Histogram", "Snapshot", "render"]

#: Upper bounds (seconds) of the fsync histogram: an fdatasync here is ~125 µs; a slow disk's
#: tens of milliseconds must still land in a bucket of their own.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0, 2.5)


class Histogram:
    """Cumulative-bucket counting of durations, Prometheus' way, without a dependency."""

    def __init__(self, buckets: Sequence[float] = BUCKETS) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


@dataclass
class Snapshot:
    """What one scrape shows, read in the trio thread (rendering may happen elsewhere)."""

    version: str
    containers: dict[str, int]
    restarts: int
    exits: int
    last_seq: int
    subscribers: int
    shims: int
    http_connections: int
    fsync: list[tuple[str, int]] = field(default_factory=list)
    fsync_sum: float = 0.0


def render(snap: Snapshot) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    class Collector:
        def collect(self) -> Any:
            g = GaugeMetricFamily("tether_containers", "Containers by state", labels=["state"])
            for state, n in sorted(snap.containers.items()):
                g.add_metric([state], n)
            yield g
            yield CounterMetricFamily("tether_container_restarts",
                                      "Restarts of the existing containers", value=snap.restarts)
            yield CounterMetricFamily("tether_task_exits",
                                      "Task exits recorded since the daemon started",
                                      value=snap.exits)
            yield CounterMetricFamily("tether_events", "The last seq of the event log",
                                      value=snap.last_seq)
            yield HistogramMetricFamily("tether_log_fsync_seconds",
                                        "Seconds to write and fdatasync a batch of the event log",
                                        buckets=snap.fsync, sum_value=snap.fsync_sum)
            yield GaugeMetricFamily("tether_subscribers", "Live event subscribers",
                                    value=snap.subscribers)
            yield GaugeMetricFamily("tether_shims", "Shims linked to the daemon",
                                    value=snap.shims)
            yield GaugeMetricFamily("tether_http_connections", "Open HTTP connections",
                                    value=snap.http_connections)
            info = GaugeMetricFamily("tether_build_info", "The daemon's version",
                                     labels=["version"])
            info.add_metric([snap.version], 1)
            yield info

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return generate_latest(registry)
