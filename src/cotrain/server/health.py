"""The state of each component, for `/health`, `/health/ready` and `/health/live` (api/system.py):
what compose and Kubernetes probes, and an operator who is paged, need to know.

Components: the database (answers `SELECT 1`), the fan-out (Redis subscribed, or in-process), the
DHT (running, when COTRAIN_START_DHT asks for it) and the embedded executor (its loop alive, when
this server runs sessions). A component that is not configured is ok: it is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# the names /health/ready uses for them (issue 18)
DATABASE, FANOUT, DHT, EXECUTOR = "database", "fan-out", "dht", "executor"


@dataclass(frozen=True)
class ComponentState:
    ok: bool
    state: str  # a word or two: "up", "down", "off", "running", ...
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "state": self.state, "error": self.error}


def database_state(platform: Any) -> ComponentState:
    try:
        platform.metrics.database_answers()
    except Exception as exc:
        return ComponentState(False, "down", f"The {platform.engine.dialect.name} database does not answer "
                                             f"({exc.__class__.__name__}).")
    return ComponentState(True, "up")


def fanout_state(platform: Any) -> ComponentState:
    state = platform.hub.state
    if state.up:
        return ComponentState(True, "up")
    return ComponentState(False, "down", state.error or f"The {state.kind} fan-out is down.")


def dht_state(platform: Any) -> ComponentState:
    if not platform.settings.start_dht:
        return ComponentState(True, "off")
    if platform.dht.running:
        return ComponentState(True, "running")
    return ComponentState(False, "stopped", platform.dht.error or "The DHT node is not running.")


def executor_state(platform: Any) -> ComponentState:
    if platform.executor is None:
        return ComponentState(True, "none (workers)")
    if platform.executor.looping:
        return ComponentState(True, "running")
    return ComponentState(False, "stopped", "The embedded executor's loop is not running; sessions are not started "
                                            "or followed here.")


def component_states(platform: Any) -> dict[str, ComponentState]:
    return {DATABASE: database_state(platform), FANOUT: fanout_state(platform), DHT: dht_state(platform),
            EXECUTOR: executor_state(platform)}


def failed_sentence(states: dict[str, ComponentState]) -> str | None:
    """One sentence naming every failed component and why, or None when all are ok."""
    failed = [f"{name}: {state.error or state.state}" for name, state in states.items() if not state.ok]
    return f"Not ready; failed: {'; '.join(failed)}" if failed else None
