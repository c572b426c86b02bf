"""HTTP request counters and a latency histogram for `GET /metrics` (pure ASGI middleware, so
it costs a few microseconds per request and sees WebSocket upgrades too).

Label values come from fixed sets only (issue 11): a method outside `METHODS` counts as `OTHER`,
and the route is the matched route's template (`/api/v1/sessions/{session_id}`), or `UNMATCHED`
for every path no route knows. A scan of a million random paths or methods adds one series."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
UNMATCHED = "UNMATCHED"


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER_METHOD


class RouteLabels:
    """The full template of the route that answered (`/api/v1/sessions/{session_id}`), never the
    raw path. Starlette's router leaves the route in `scope["route"]`; FastAPI >= 0.120 keeps
    included routers nested, so that route knows only its own part of the path and the full one
    comes from the app's route contexts (looked up once per route)."""

    def __init__(self) -> None:
        self.paths: dict[int, str] = {}

    def __call__(self, scope: dict[str, Any]) -> str:
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        path = self.paths.get(id(route))
        if path is None:
            self.paths.update(_full_paths(scope.get("app")))
            path = self.paths.setdefault(id(route), getattr(route, "path", "") or "/")
        return path


def _full_paths(app: Any) -> dict[int, str]:
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI copies included routes, so their own path is the full one
        return {}
    routes = getattr(app, "routes", [])
    return {id(context.original_route): context.path for context in iter_route_contexts(routes) if context.path}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class HttpMetrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, status class) -> count
        self.by_route: Counter[tuple[str, str, str]] = Counter()  # (route, method, status class) -> count
        self.bucket_counts = [0] * len(BUCKETS_S)
        self.count = 0
        self.total_s = 0.0

    def observe(self, method: str, status: int, seconds: float, route: str = UNMATCHED) -> None:
        method, code = method_label(method), f"{status // 100}xx"
        self.requests[(method, code)] += 1
        self.by_route[(route, method, code)] += 1
        self.count += 1
        self.total_s += seconds
        for i, bound in enumerate(BUCKETS_S):
            if seconds <= bound:
                self.bucket_counts[i] += 1

    def prometheus_lines(self) -> list[str]:
        lines = [
            "# HELP cotrain_http_requests_total HTTP requests answered, by method and status class.",
            "# TYPE cotrain_http_requests_total counter",
            *(f'cotrain_http_requests_total{{method="{m}",code="{c}"}} {n}'
              for (m, c), n in sorted(self.requests.items())),
            "# HELP cotrain_http_route_requests_total HTTP requests answered, by route template "
            f"({UNMATCHED}: no route), method and status class.",
            "# TYPE cotrain_http_route_requests_total counter",
            *(f'cotrain_http_route_requests_total{{route="{_escape(r)}",method="{m}",code="{c}"}} {n}'
              for (r, m, c), n in sorted(self.by_route.items())),
            "# HELP cotrain_http_request_duration_seconds Time to answer HTTP requests.",
            "# TYPE cotrain_http_request_duration_seconds histogram",
            *(f'cotrain_http_request_duration_seconds_bucket{{le="{b}"}} {n}'
              for b, n in zip(BUCKETS_S, self.bucket_counts, strict=True)),
            f'cotrain_http_request_duration_seconds_bucket{{le="+Inf"}} {self.count}',
            f"cotrain_http_request_duration_seconds_sum {self.total_s:.6f}",
            f"cotrain_http_request_duration_seconds_count {self.count}",
        ]
        return lines


class HttpMetricsMiddleware:
    def __init__(self, app: Any, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.route_label = RouteLabels()

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
            self.metrics.observe(scope["method"], status, time.perf_counter() - start, self.route_label(scope))
