"""Prometheus metrics in the text exposition format (version 0.0.4), kept in-process.

Series: aceserver_http_requests_total{method,route,status}, aceserver_http_request_duration_seconds
(histogram by route), aceserver_http_requests_in_flight, aceserver_atoms_evaluated_total{model},
aceserver_structures_evaluated_total{model}, aceserver_errors_total{kind}, aceserver_ready,
aceserver_model_reloads_total{model,result}, aceserver_learning_refits_total{model,result}. `snapshot()` gives the same counters as JSON, with
latency percentiles of the latest calculate requests, for the web page.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict, deque

import numpy as np

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RECENT = 2000          # calculate latencies kept for the percentiles of `snapshot()`
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(**kw: str) -> str:
    def esc(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in kw.items()) + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.hist: dict[str, list[int]] = {}
        self.hist_sum: dict[str, float] = defaultdict(float)
        self.atoms: dict[str, int] = defaultdict(int)
        self.structures: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.in_flight = 0
        self.ready = False
        self.reloads: dict[tuple[str, str], int] = defaultdict(int)
        self.refits: dict[tuple[str, str], int] = defaultdict(int)
        self.recent: deque[tuple[float, float]] = deque(maxlen=RECENT)   # (unix time, seconds) of calculates
        self.started = time.time()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, str(status))] += 1
            counts = self.hist.setdefault(route, [0] * (len(BUCKETS) + 1))
            counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self.hist_sum[route] += seconds
            if route.endswith("/calculate"):
                self.recent.append((time.time(), seconds))

    def count_error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def count_evaluated(self, model: str, atoms: int, structures: int) -> None:
        with self._lock:
            self.atoms[model] += atoms
            self.structures[model] += structures

    def count_reload(self, model: str, result: str) -> None:
        with self._lock:
            self.reloads[(model, result)] += 1

    def count_refit(self, model: str, result: str) -> None:
        with self._lock:
            self.refits[(model, result)] += 1

    def snapshot(self) -> dict:
        """Counters and latency percentiles (ms) of the latest calculate requests, for the web page."""
        with self._lock:
            by_status: dict[str, int] = defaultdict(int)
            for (_, route, status), n in self.requests.items():
                if route.endswith("/calculate"):
                    by_status[status] += n
            lat = np.array([s for _, s in self.recent]) * 1e3
            return {
                "time": time.time(), "uptime_s": time.time() - self.started, "ready": self.ready,
                "in_flight": self.in_flight,
                "calculate_requests": sum(by_status.values()), "calculate_by_status": dict(by_status),
                "atoms": sum(self.atoms.values()), "structures": sum(self.structures.values()),
                "errors": dict(self.errors),
                "reloads": [{"model": m, "result": r, "count": n} for (m, r), n in sorted(self.reloads.items())],
                "latency_ms": {"window": int(lat.size), **({f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 99)}
                                                          if lat.size else {})},
                "units": {"uptime_s": "s", "latency_ms": "ms", "atoms": "atoms (cumulative)",
                          "time": "s since 1970-01-01 UTC"},
            }

    def render(self) -> str:
        with self._lock:
            out = [
                "# HELP aceserver_http_requests_total HTTP requests served, by method, route and status.",
                "# TYPE aceserver_http_requests_total counter",
            ]
            for (m, r, s), n in sorted(self.requests.items()):
                out.append(f"aceserver_http_requests_total{_labels(method=m, route=r, status=s)} {n}")
            out += ["# HELP aceserver_http_request_duration_seconds Request latency in seconds, by route.",
                    "# TYPE aceserver_http_request_duration_seconds histogram"]
            for route, counts in sorted(self.hist.items()):
                cum = 0
                for le, c in zip([*map(repr, BUCKETS), "+Inf"], counts):
                    cum += c
                    out.append(f"aceserver_http_request_duration_seconds_bucket{_labels(route=route, le=le)} {cum}")
                out.append(f"aceserver_http_request_duration_seconds_sum{_labels(route=route)} {self.hist_sum[route]!r}")
                out.append(f"aceserver_http_request_duration_seconds_count{_labels(route=route)} {cum}")
            out += ["# HELP aceserver_http_requests_in_flight Requests being served now.",
                    "# TYPE aceserver_http_requests_in_flight gauge",
                    f"aceserver_http_requests_in_flight {self.in_flight}",
                    "# HELP aceserver_atoms_evaluated_total Atoms evaluated, by model.",
                    "# TYPE aceserver_atoms_evaluated_total counter"]
            out += [f"aceserver_atoms_evaluated_total{_labels(model=m)} {n}" for m, n in sorted(self.atoms.items())]
            out += ["# HELP aceserver_structures_evaluated_total Structures evaluated, by model.",
                    "# TYPE aceserver_structures_evaluated_total counter"]
            out += [f"aceserver_structures_evaluated_total{_labels(model=m)} {n}"
                    for m, n in sorted(self.structures.items())]
            out += ["# HELP aceserver_errors_total Error responses, by kind (invalid_input, unknown_model, ...).",
                    "# TYPE aceserver_errors_total counter"]
            out += [f"aceserver_errors_total{_labels(kind=k)} {n}" for k, n in sorted(self.errors.items())]
            out += ["# HELP aceserver_model_reloads_total Hot reloads of model files, by model and result "
                    "(swapped, refused).", "# TYPE aceserver_model_reloads_total counter"]
            out += [f"aceserver_model_reloads_total{_labels(model=m, result=r)} {n}"
                    for (m, r), n in sorted(self.reloads.items())]
            out += ["# HELP aceserver_learning_refits_total Background refits of learning models (--learn), by model "
                    "and result (swapped; failed: the served model stayed; refused: the fitter refused a posted "
                    "batch as input).", "# TYPE aceserver_learning_refits_total counter"]
            out += [f"aceserver_learning_refits_total{_labels(model=m, result=r)} {n}"
                    for (m, r), n in sorted(self.refits.items())]
            out += ["# HELP aceserver_ready 1 once all models are loaded and warmed.",
                    "# TYPE aceserver_ready gauge", f"aceserver_ready {int(self.ready)}"]
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500
        m = self.metrics

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with m._lock:
            m.in_flight += 1
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            with m._lock:
                m.in_flight -= 1
            route = scope.get("route")
            path = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            m.observe_request(scope.get("method", ""), path, status, time.perf_counter() - start)
