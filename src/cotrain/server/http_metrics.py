"""HTTP request counters and a latency histogram for `GET /metrics` (pure ASGI middleware, so
it costs a few microseconds per request and sees WebSocket upgrades too)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class HttpMetrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, status class) -> count
        self.bucket_counts = [0] * len(BUCKETS_S)
        self.count = 0
        self.total_s = 0.0

    def observe(self, method: str, status: int, seconds: float) -> None:
        self.requests[(method, f"{status // 100}xx")] += 1
        self.count += 1
        self.total_s += seconds
        for i, bound in enumerate(BUCKETS_S):
            if seconds <= bound:
                self.bucket_counts[i] += 1

    def prometheus_lines(self) -> list[str]:
        lines = [
            "# HELP cotrain_http_requests_total HTTP requests answered, by method and status class.",
            "# TYPE cotrain_http_requests_total counter",
            *(f'cotrain_http_requests_total{{method="{m}",code="{c}"}} {n}' for (m, c), n in sorted(self.requests.items())),
            "# HELP cotrain_http_request_duration_seconds Time to answer HTTP requests.",
            "# TYPE cotrain_http_request_duration_seconds histogram",
            *(f'cotrain_http_request_duration_seconds_bucket{{le="{b}"}} {n}' for b, n in zip(BUCKETS_S, self.bucket_counts, strict=True)),
            f'cotrain_http_request_duration_seconds_bucket{{le="+Inf"}} {self.count}',
            f"cotrain_http_request_duration_seconds_sum {self.total_s:.6f}",
            f"cotrain_http_request_duration_seconds_count {self.count}",
        ]
        return lines


class HttpMetricsMiddleware:
    def __init__(self, app: Any, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.observe(scope["method"], status, time.perf_counter() - start)
