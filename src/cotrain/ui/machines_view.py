"""What the Machines and Rounds sections of a session's page show, without NiceGUI.

The input is the `system` and `round` blocks of the engine's progress events (issue 19's
contract): stored history when the page opens, then the `training.progress` messages as they
arrive. `Machines` keeps each node's latest sample and a bounded series per node for the charts;
`Rounds` keeps the DiLoCo round breakdown. Both ignore replays (a message seen twice changes
nothing), so the page can feed them history and live messages in any overlap.
"""

from __future__ import annotations

import bisect
import copy
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from cotrain.server.message_data import ProgressData
from cotrain.ui import format as fmt
from cotrain.ui.i18n import t

SERIES_LIMIT = 360  # samples kept per node for the charts (an hour at a 10 s log interval)
ROUND_LIMIT = 200  # rounds the chart shows (the newest)
STALE_SECONDS = 60.0  # a node silent this long is shown greyed out
CHART_NODES = 16  # nodes the charts draw (the most recently seen); the table lists every one
# (name, NODE key) of the charts over time, per node
CHART_FIELDS = ("ram_used_bytes", "net_sent_bytes_per_s", "net_recv_bytes_per_s", "disk_read_bytes_per_s",
                "disk_write_bytes_per_s", "gpu_util_percent")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) or math.isinf(out) else out


# ---- formatting -------------------------------------------------------------------------------------
def rate(bytes_per_s: Any) -> str:
    """A byte rate as people read it: 0 B/s, 512 B/s, 1.5 KiB/s, 12.0 MiB/s; unknown: —."""
    value = _number(bytes_per_s)
    if value is None:
        return t("common.none")
    return f"{fmt.size(max(0.0, value))}/s"


def percent(value: Any) -> str:
    number = _number(value)
    return t("common.none") if number is None else f"{number:.0f}%"


def used_of(used: Any, total: Any) -> str:
    """'3.2 / 15.5 GiB' (both in the larger number's unit), or what is known of it."""
    u, tot = _number(used), _number(total)
    if u is None:
        return t("common.none")
    if not tot:
        return fmt.size(u)
    unit, scale = "B", 1.0
    for name in ("KiB", "MiB", "GiB", "TiB"):
        if tot / scale < 1024:
            break
        unit, scale = name, scale * 1024
    return f"{u / scale:.1f} / {tot / scale:.1f} {unit}" if unit != "B" else f"{u:.0f} / {tot:.0f} B"


def has_gpu(node: dict[str, Any]) -> bool:
    """A node without a GPU has no `gpus` key (the contract): it shows "—", never 0%."""
    return bool(node.get("gpus"))


def gpu_util(node: dict[str, Any]) -> str:
    """One GPU: its utilisation; several: their mean and how many ('71% ×2')."""
    if not has_gpu(node):
        return t("common.none")
    values = [v for v in (_number(g.get("util_percent")) for g in node["gpus"]) if v is not None]
    if not values:
        return t("common.none")
    mean = f"{sum(values) / len(values):.0f}%"
    return mean if len(node["gpus"]) == 1 else f"{mean} ×{len(node['gpus'])}"


def gpu_memory(node: dict[str, Any]) -> str:
    if not has_gpu(node):
        return t("common.none")
    used = [v for v in (_number(g.get("mem_used_bytes")) for g in node["gpus"]) if v is not None]
    total = [v for v in (_number(g.get("mem_total_bytes")) for g in node["gpus"]) if v is not None]
    return used_of(sum(used), sum(total)) if used else t("common.none")


def gpu_detail(node: dict[str, Any]) -> str:
    """Each device on a line (the GPU cells' tooltip): name, utilisation, memory, power, temperature."""
    if not has_gpu(node):
        return t("machines.no_gpu")
    lines = []
    for gpu in node["gpus"]:
        parts = [f"#{gpu.get('index', '?')} {gpu.get('name') or 'GPU'}", percent(gpu.get("util_percent")),
                 used_of(gpu.get("mem_used_bytes"), gpu.get("mem_total_bytes"))]
        if _number(gpu.get("power_w")) is not None:
            parts.append(f"{float(gpu['power_w']):.0f} W")
        if _number(gpu.get("temp_c")) is not None:
            parts.append(f"{float(gpu['temp_c']):.0f} °C")
        lines.append(" · ".join(parts))
    return "\n".join(lines)


def seen(timestamp: Any, now: float) -> str:
    """How long ago a node last reported: 4 s ago, 3 min ago, 2 h ago."""
    when = _number(timestamp)
    if when is None:
        return t("common.none")
    seconds = max(0.0, now - when)
    if seconds < 60:
        return t("machines.seen_seconds", n=int(seconds))
    if seconds < 3600:
        return t("machines.seen_minutes", n=int(seconds // 60))
    if seconds < 86400:
        return t("machines.seen_hours", n=int(seconds // 3600))
    return t("machines.seen_days", n=int(seconds // 86400))


def short_id(peer: str | None) -> str:
    """A libp2p peer id is 52 characters: its head and tail are enough to tell peers apart."""
    if not peer:
        return t("common.none")
    return peer if len(peer) <= 16 else f"{peer[:8]}…{peer[-6:]}"


def _natural(node_id: str) -> tuple[Any, ...]:
    """node-2 before node-10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", node_id))


# ---- machines -------------------------------------------------------------------------------------
def normalize_node(raw: Any) -> dict[str, Any] | None:
    """One NODE of a `system` block in the contract's keys, or None when it names no node."""
    if not isinstance(raw, dict):
        return None
    node = copy.deepcopy(raw)
    if not node.get("node"):
        return None
    node["node"] = str(node["node"])
    if "gpus" in node and not isinstance(node["gpus"], list):
        node.pop("gpus")
    return node


def system_nodes(system: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The nodes of a progress message's `system` block (none without one)."""
    if not isinstance(system, dict):
        return []
    nodes = system.get("nodes")
    if not isinstance(nodes, list):
        return []
    return [n for n in (normalize_node(raw) for raw in nodes) if n is not None]


def chart_value(node: dict[str, Any], name: str) -> float | None:
    """A NODE's value for a chart; the GPU utilisation is the mean over its devices (a stored history
    point carries that mean as `gpu_util_percent` already, and none on a node without a GPU)."""
    if name == "gpu_util_percent" and has_gpu(node):
        values = [v for v in (_number(g.get("util_percent")) for g in node["gpus"]) if v is not None]
        return sum(values) / len(values) if values else None
    return _number(node.get(name))


@dataclass
class Machines:
    """The latest sample of every node and a bounded series of each for the charts."""

    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    # node -> [(time, {chart field: value})], oldest first
    series: dict[str, list[tuple[float, dict[str, float | None]]]] = field(default_factory=dict)

    def add(self, raw: Any) -> bool:
        """Take one NODE sample, in any order (stored history after live messages, replays); False
        when nothing changed (this node's sample at this time is already known)."""
        node = normalize_node(raw)
        if node is None:
            return False
        name = node["node"]
        when = _number(node.get("time")) or time.time()
        node["time"] = when
        points = self.series.setdefault(name, [])
        at = bisect.bisect_left(points, when, key=lambda p: p[0])
        if at < len(points) and points[at][0] == when:
            return False
        points.insert(at, (when, {f: chart_value(node, f) for f in CHART_FIELDS}))
        if len(points) > SERIES_LIMIT:
            del points[: len(points) - SERIES_LIMIT]
        known = self.latest.get(name)
        if known is None or when > known["time"]:
            self.latest[name] = node
        return True

    def add_many(self, nodes: list[Any]) -> bool:
        changed = False
        for raw in sorted(nodes, key=lambda n: _number(n.get("time") if isinstance(n, dict) else None) or 0.0):
            changed = self.add(raw) or changed
        return changed

    def add_progress(self, progress: ProgressData) -> bool:
        """Merge a `training.progress` message's `system` block; True when a row changed."""
        return self.add_many(system_nodes(progress.system))

    def any_gpu(self) -> bool:
        return any(has_gpu(n) for n in self.latest.values())

    def rows(self, now: float) -> list[dict[str, Any]]:
        """The table's rows, one per node in node order."""
        out = []
        for name in sorted(self.latest, key=_natural):
            node = self.latest[name]
            age = max(0.0, now - node["time"])
            out.append({
                "node": name,
                "node_short": short_id(name),
                "gpu": has_gpu(node),
                "gpu_util": gpu_util(node),
                "gpu_mem": gpu_memory(node),
                "gpu_detail": gpu_detail(node),
                "cpu": percent(node.get("cpu_percent")),
                "ram": used_of(node.get("ram_used_bytes"), node.get("ram_total_bytes")),
                "net_in": rate(node.get("net_recv_bytes_per_s")),
                "net_out": rate(node.get("net_sent_bytes_per_s")),
                "disk_read": rate(node.get("disk_read_bytes_per_s")),
                "disk_write": rate(node.get("disk_write_bytes_per_s")),
                "tps": fmt.count(_number(node.get("tokens_per_second"))),
                "seen": seen(node["time"], now),
                "stale": age > STALE_SECONDS,
            })
        return out

    def chart(self, *names: str) -> dict[str, list[list[float]]]:
        """Series for a chart: '<node>' per node for one field, '<node> <field>' for several (a peer id
        shortened), for the CHART_NODES most recently seen nodes. Points are [unix ms, value]; a sample
        without the value is left out."""
        out: dict[str, list[list[float]]] = {}
        recent = sorted(self.series, key=lambda n: self.latest[n]["time"] if n in self.latest else 0.0)[-CHART_NODES:]
        for node in sorted(recent, key=_natural):
            for name in names:
                label = short_id(node) if len(names) == 1 else f"{short_id(node)} {t('machines.series.' + name)}"
                points = [[when * 1000.0, value] for when, values in self.series[node]
                          if (value := values.get(name)) is not None]
                if points:
                    out[label] = points
        return out


# ---- DiLoCo rounds ----------------------------------------------------------------------------------
def normalize_round(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    block = copy.deepcopy(raw)
    number = _number(block.get("round"))
    if number is None:
        return None
    block["round"] = int(number)
    if not isinstance(block.get("peers"), list):
        block["peers"] = []
    return block


ROUND_FIELDS = ("round_seconds", "train_seconds", "averaging_seconds", "wait_seconds", "bytes_sent",
                "bytes_received", "group_size", "slowest_peer")


@dataclass
class RoundStats:
    """One round, merged from its reports the way the server stores it (node_samples.record_round):
    a later report updates the fields it carries, peers merge by id. So the page shows the same
    round whether it came live, peer by peer, or from the stored history."""

    round: int
    fields: dict[str, Any] = field(default_factory=dict)
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def merge(self, block: dict[str, Any]) -> bool:
        changed = False
        for key in ROUND_FIELDS:
            if block.get(key) is not None and self.fields.get(key) != block[key]:
                self.fields[key] = block[key]
                changed = True
        for peer in block.get("peers") or []:
            if isinstance(peer, dict) and peer.get("peer"):
                name = str(peer["peer"])
                merged = {**self.peers.get(name, {}), **{k: v for k, v in peer.items() if v is not None}}
                if merged != self.peers.get(name):
                    self.peers[name] = merged
                    changed = True
        return changed

    def _field(self, key: str) -> float:
        return _number(self.fields.get(key)) or 0.0

    def _trained(self) -> list[float]:
        return [v for v in (_number(p.get("train_seconds")) for p in self.peers.values()) if v is not None]

    @property
    def train_seconds(self) -> float:
        """The peers' mean training time when two or more are known, else the report's."""
        trained = self._trained()
        return sum(trained) / len(trained) if len(trained) >= 2 else self._field("train_seconds")

    @property
    def wait_seconds(self) -> float:
        """The peers' mean wait for the slowest one (its training time less theirs) when two or more
        are known, else the report's own wait for its group."""
        trained = self._trained()
        if len(trained) >= 2:
            return max(trained) - sum(trained) / len(trained)
        return self._field("wait_seconds")

    @property
    def averaging_seconds(self) -> float:
        return self._field("averaging_seconds")

    @property
    def round_seconds(self) -> float:
        return self._field("round_seconds") or self.train_seconds + self.averaging_seconds + self.wait_seconds

    @property
    def group_size(self) -> int:
        return max(int(self._field("group_size")), len(self.peers))

    def _bytes(self, key: str) -> int:
        """The round's traffic: the peers' own figures summed where all are known, else the report's."""
        if self.peers and all(_number(p.get(key)) is not None for p in self.peers.values()):
            return int(sum(float(p[key]) for p in self.peers.values()))
        return int(self._field(key))

    @property
    def bytes_sent(self) -> int:
        return self._bytes("bytes_sent")

    @property
    def bytes_received(self) -> int:
        return self._bytes("bytes_received")

    @property
    def slowest_peer(self) -> str | None:
        """The peer the round waited for: as reported, or the one that trained longest of two or more."""
        if self.fields.get("slowest_peer"):
            return str(self.fields["slowest_peer"])
        timed = [(float(p["train_seconds"]), name) for name, p in self.peers.items()
                 if _number(p.get("train_seconds")) is not None]
        return max(timed)[1] if len(timed) >= 2 else None


@dataclass
class Rounds:
    by_round: dict[int, RoundStats] = field(default_factory=dict)

    def add(self, raw: Any) -> bool:
        """Merge one `round` block; False when it changed nothing (a replay)."""
        block = normalize_round(raw)
        if block is None:
            return False
        new = block["round"] not in self.by_round
        stats = self.by_round.setdefault(block["round"], RoundStats(block["round"]))
        changed = stats.merge(block) or new
        if len(self.by_round) > ROUND_LIMIT:
            del self.by_round[min(self.by_round)]
        return changed

    def add_many(self, blocks: list[Any]) -> bool:
        changed = False
        for raw in blocks:
            changed = self.add(raw) or changed
        return changed

    def add_progress(self, progress: ProgressData) -> bool:
        """Merge a `training.progress` message's DiLoCo `round` block; True when a round changed."""
        return self.add(progress.round) if progress.round is not None else False

    def ordered(self) -> list[RoundStats]:
        return [self.by_round[n] for n in sorted(self.by_round)]

    def bars(self) -> dict[str, Any]:
        """The stacked chart's data: round labels and seconds of training, averaging, waiting."""
        rounds = self.ordered()
        return {
            "rounds": [str(r.round) for r in rounds],
            "train": [round(r.train_seconds, 3) for r in rounds],
            "averaging": [round(r.averaging_seconds, 3) for r in rounds],
            "wait": [round(r.wait_seconds, 3) for r in rounds],
        }

    def latest(self) -> RoundStats | None:
        return self.by_round[max(self.by_round)] if self.by_round else None

    def summary(self) -> str:
        """One sentence about the newest round: its time split and who was slowest."""
        last = self.latest()
        if last is None:
            return ""
        text = t("rounds.summary", round=last.round, seconds=f"{last.round_seconds:.1f}",
                 train=f"{last.train_seconds:.1f}", averaging=f"{last.averaging_seconds:.1f}",
                 wait=f"{last.wait_seconds:.1f}", peers=last.group_size,
                 sent=fmt.size(last.bytes_sent), received=fmt.size(last.bytes_received))
        return text

    def slowest_text(self) -> str:
        last = self.latest()
        if last is None:
            return ""
        peer = last.slowest_peer
        if peer is None:
            return t("rounds.slowest_alone") if last.group_size <= 1 else t("rounds.slowest_unknown")
        train = _number(last.peers.get(peer, {}).get("train_seconds"))
        if train is None:
            return t("rounds.slowest", peer=short_id(peer), round=last.round)
        return t("rounds.slowest_time", peer=short_id(peer), round=last.round, seconds=f"{train:.1f}")

    def peer_rows(self) -> list[dict[str, Any]]:
        """The newest round's peers: training time and traffic, slowest first."""
        last = self.latest()
        if last is None:
            return []
        slowest = last.slowest_peer
        rows = []
        for name, peer in last.peers.items():
            train = _number(peer.get("train_seconds"))
            rows.append({
                "peer": name, "peer_short": short_id(name), "slowest": name == slowest,
                "train": t("common.none") if train is None else f"{train:.1f} s", "train_s": train or 0.0,
                "sent": fmt.size(_number(peer.get("bytes_sent"))),
                "received": fmt.size(_number(peer.get("bytes_received"))),
            })
        return sorted(rows, key=lambda r: (not r["slowest"], -r["train_s"]))
