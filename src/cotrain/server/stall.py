"""Hung runs (issue 18): a run that is alive but has written no event for too long is stopped.

The limit, per attempt: COTRAIN_STALL_TIMEOUT seconds when it is set (`0`: never), else the larger
of FLOOR_S and SLOWEST_FACTOR times the slowest interval between two of the run's events seen so
far, so a model whose steps (or checkpoints, or evals) are slow gets as much room as it has shown
it needs. Until the attempt's first event (model build, data preparation, compilation) the limit is
STARTUP_FACTOR times that. The floor is high on purpose: an evaluation or a checkpoint save of a
large model writes no event for minutes, and the first one may come before any slow interval was
seen; a hang found half an hour late costs little on a run of days, a healthy run killed costs more.
The executor stops a stalled run as it cancels one (SIGTERM, then SIGKILL after the grace) and the
retry resumes from the last checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from cotrain.core.events import EventType, read_events

FLOOR_S = 1800.0
SLOWEST_FACTOR = 20.0
STARTUP_FACTOR = 3.0


class StallTimer:
    """Watches a run's last event seq: `stalled(seq, now)` is true once no new event came within the limit."""

    def __init__(self, fixed_s: float | None, seq: int, now: float):
        self.fixed_s = fixed_s
        self._seq = seq
        self._since = now  # when the last event (or the start) was seen
        self._seen_event = False
        self._slowest_s = 0.0

    def limit_s(self) -> float | None:
        """Seconds without an event that count as a hang now; None: never."""
        if self.fixed_s == 0:
            return None
        limit = self.fixed_s if self.fixed_s is not None else max(FLOOR_S, SLOWEST_FACTOR * self._slowest_s)
        return limit if self._seen_event else STARTUP_FACTOR * limit

    def silent_s(self, now: float) -> float:
        return now - self._since

    def stalled(self, seq: int, now: float) -> bool:
        if seq != self._seq:
            if self._seen_event:
                self._slowest_s = max(self._slowest_s, now - self._since)
            self._seq, self._since, self._seen_event = seq, now, True
            return False
        limit = self.limit_s()
        return limit is not None and now - self._since > limit


def stall_reason(silent_s: float, session_dir: Path) -> str:
    """The sentence for the run's log and status: how long it was silent and where a retry resumes."""
    # the event stream, not status.json: a run stopped between writing an event and its status.json has
    # the event only
    step = None
    for event in read_events(session_dir):
        if event.get("type") == EventType.CHECKPOINT:
            step = event.get("step")
    resume = f"its last checkpoint is step {step}" if step is not None else "it had saved no checkpoint yet"
    return f"no event for {silent_s:.0f} s, so the hung run was killed ({resume})"
