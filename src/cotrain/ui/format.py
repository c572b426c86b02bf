"""Numbers, sizes, durations and ages as people read them."""

from __future__ import annotations

import math
import time

from cotrain.ui.i18n import t


def count(value: float | int | None) -> str:
    """1234 -> 1.2K, 6_738_415_616 -> 6.74B."""
    if value is None:
        return t("common.none")
    value = float(value)
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}" if value == int(value) else f"{value:.3g}"


def size(num_bytes: float | int | None) -> str:
    if num_bytes is None:
        return t("common.none")
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def metric(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return t("common.none")
    return f"{value:.{digits}g}"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0 or math.isinf(seconds):
        return t("common.none")
    if seconds < 1:
        return "<1s"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def age(timestamp: float | None, now: float | None = None) -> str:
    if timestamp is None:
        return t("common.none")
    seconds = max(0.0, (now or time.time()) - timestamp)
    if seconds < 60:
        return t("age.now")
    if seconds < 3600:
        return t("age.minutes", n=int(seconds // 60))
    if seconds < 86400:
        return t("age.hours", n=int(seconds // 3600))
    return t("age.days", n=int(seconds // 86400))


def clock(timestamp: float | None) -> str:
    if timestamp is None:
        return t("common.none")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
