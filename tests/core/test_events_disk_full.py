"""The event stream on a disk that fills up (issue 18), on a real 1 MiB tmpfs: the event that does not
fit raises DiskFullError (one sentence naming the file and its free bytes), closing the writer does not
raise, no temp file is left, and the run's next attempt continues the stream: every complete event
once, seqs without a gap, even when the refused line was cut short."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cotrain.core.events import EventWriter, read_events, read_status
from cotrain.disk_space import DiskFullError
from tests.small_disk import fill, small_disk

PAGE = 4096  # tmpfs gives a file its space a page at a time


def test_an_event_that_does_not_fit_is_one_sentence_and_the_next_attempt_continues(tmp_path: Path):
    with small_disk(tmp_path / "disk", size_mib=1) as disk:
        session_dir = disk / "logs" / "s1"
        writer = EventWriter(session_dir, "s1")
        for step in (1, 2, 3):
            writer.emit("progress", step=step)
        events = session_dir / "events.jsonl"
        # end the file 40 bytes short of its page: once the disk is full only the start of a line fits there
        probe = json.dumps({"type": "progress", "session_id": "s1", "seq": 4, "time": time.time(), "step": 4,
                            "padding": ""}, separators=(",", ":"))
        writer.emit("progress", step=4, padding="x" * (PAGE - 40 - events.stat().st_size - len(probe) - 1))
        ballast = fill(disk)

        with pytest.raises(DiskFullError) as refused:
            writer.emit("progress", step=5, padding="x" * 300)
        sentence = str(refused.value)
        assert sentence.startswith("The disk is full: the event stream ") and "\n" not in sentence
        assert str(events) in sentence and " free there" in sentence
        writer.close()  # the buffered rest of the refused line cannot be written either: no error
        assert not events.read_bytes().endswith(b"\n")  # the refused line was cut short
        assert not [p.name for p in session_dir.iterdir() if p.name.endswith(".tmp")]

        ballast.unlink()
        again = EventWriter(session_dir, "s1")  # the retry's writer
        again.emit("started", step=4)
        again.close()
        stored = list(read_events(session_dir))
        assert [e["seq"] for e in stored] == [1, 2, 3, 4, 5] and stored[-1]["type"] == "started"
        status = read_status(session_dir)
        assert status is not None and status["state"] == "running"
