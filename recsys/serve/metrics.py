"""Service metrics in the Prometheus text format (version 0.0.4), with no client library:
request counts by endpoint and status, latency histograms by endpoint, micro-batch sizes, and
gauges the service sets (events logged, reloads, served catalog size).

    m = Metrics()
    m.observe("/recommend", 200, 0.004)
    m.batch(8)
    m.text()      # "# TYPE recsys_requests_total counter\\nrecsys_requests_total{...} 1\\n..."
"""
from __future__ import annotations

import bisect
import threading

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)      # the last one: above every bucket (+Inf)
        self.sum = 0.0
        self.n = 0

    def add(self, x: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, x)] += 1
        self.sum += x
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, acc = [], 0
        sep = "," if labels else ""
        for b, c in zip(list(self.buckets) + ["+Inf"], self.counts):
            acc += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b}"}} {acc}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {self.sum}", f"{name}_count{lab} {self.n}"]
        return out


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.batches = _Histogram(BATCH_BUCKETS)
        self.gauges: dict[str, float] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).add(seconds)

    def batch(self, rows: int) -> None:
        with self._lock:
            self.batches.add(rows)

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def inc(self, name: str, by: float = 1) -> None:
        with self._lock:
            self.gauges[name] = self.gauges.get(name, 0) + by

    def text(self) -> str:
        with self._lock:
            out = ["# HELP recsys_requests_total HTTP requests by endpoint and status.",
                   "# TYPE recsys_requests_total counter"]
            out += [f'recsys_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                    for (e, s), n in sorted(self.requests.items())]
            out += ["# HELP recsys_request_seconds Request latency by endpoint.",
                    "# TYPE recsys_request_seconds histogram"]
            for e, h in sorted(self.latency.items()):
                out += h.lines("recsys_request_seconds", f'endpoint="{e}"')
            out += ["# HELP recsys_batch_rows Users scored per micro-batched call.",
                    "# TYPE recsys_batch_rows histogram"]
            out += self.batches.lines("recsys_batch_rows", "")
            for name, v in sorted(self.gauges.items()):
                out += [f"# TYPE recsys_{name} gauge", f"recsys_{name} {v}"]
            return "\n".join(out) + "\n"
