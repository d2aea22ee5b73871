"""Counters, gauges and latency histograms, rendered in the Prometheus text format (0.0.4).

Labels are bounded: routes are the route templates (``/v1/learners/{key}/learn``),
never the keys themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """The service's metrics; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._hist: dict[Labels, list[float]] = {}  # per labels: bucket counts..., sum, count
        self._gauges: dict[str, Callable[[], float]] = {}
        self.describe("vsml_requests_total", "counter", "HTTP requests by route, method and status code.")
        self.describe("vsml_request_duration_seconds", "histogram", "HTTP request latency by route.")
        self.describe("vsml_store_writes_total", "counter", "Records committed to the store.")
        self.describe("vsml_store_errors_total", "counter", "Store operations that failed.")
        self.describe("vsml_snapshots_total", "counter", "State snapshots written.")
        self.describe("vsml_replayed_steps_total", "counter", "Steps replayed from the log to restore learners.")
        self.describe("vsml_learned_examples_total", "counter", "Examples learned and acknowledged.")
        self.describe("vsml_errors_total", "counter", "Requests refused or failed, by kind.")

    def describe(self, name: str, kind: str, text: str) -> None:
        """Declare a metric's type and help text."""
        self._help[name] = (kind, text)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to a counter."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value

    def observe(self, seconds: float, **labels: str) -> None:
        """Record one request latency."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            h = self._hist.get(key)
            if h is None:
                h = self._hist[key] = [0.0] * (len(BUCKETS) + 2)
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def gauge(self, name: str, text: str, read: Callable[[], float], kind: str = "gauge") -> None:
        """A value read at scrape time (a gauge, or ``kind="counter"`` for a monotonic count kept elsewhere)."""
        self.describe(name, kind, text)
        self._gauges[name] = read

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value (0 if never incremented)."""
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        """Everything in the Prometheus text exposition format."""
        out: list[str] = []
        with self._lock:
            counters = {k: dict(v) for k, v in self._counters.items()}
            hist = {k: list(v) for k, v in self._hist.items()}
        for name, (kind, text) in sorted(self._help.items()):
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")
            if name in self._gauges:
                out.append(f"{name} {float(self._gauges[name]()):g}")
            elif kind == "counter":
                for labels, v in sorted(counters.get(name, {}).items()):
                    out.append(f"{name}{_fmt_labels(labels)} {v:g}")
            elif kind == "histogram":
                for labels, h in sorted(hist.items()):
                    for i, b in enumerate(BUCKETS):
                        le = 'le="' + f"{b:g}" + '"'
                        out.append(f"{name}_bucket{_fmt_labels(labels, le)} {h[i]:g}")
                    inf = 'le="+Inf"'
                    out.append(f"{name}_bucket{_fmt_labels(labels, inf)} {h[-1]:g}")
                    out.append(f"{name}_sum{_fmt_labels(labels)} {h[-2]:.6f}")
                    out.append(f"{name}_count{_fmt_labels(labels)} {h[-1]:g}")
        return "\n".join(out) + "\n"
