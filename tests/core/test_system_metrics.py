"""The machine sampler of the progress events' `system` block, against this machine's real
counters: a known amount written to disk and sent over loopback between two samples comes back
as rates within a tolerance; GPU fields are absent, not zero, without a GPU."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from cotrain.core.system_metrics import GpuReader, SystemSampler, merge_nodes

MIB = 1 << 20
NODE_KEYS = {
    "node", "host_cpus", "cpu_percent", "ram_used_bytes", "ram_total_bytes", "process_rss_bytes",
    "net_sent_bytes_per_s", "net_recv_bytes_per_s", "disk_read_bytes_per_s", "disk_write_bytes_per_s",
    "tokens_per_second", "time",
}


def write_and_sync(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with path.open("wb") as fh:
        for _ in range(size // MIB):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())


def send_over_loopback(size: int) -> None:
    """`size` bytes from one socket to another on 127.0.0.1, all read before this returns."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        received = []

        def read_all() -> None:
            conn, _ = server.accept()
            with conn:
                total = 0
                while total < size:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
                    total += len(chunk)
                received.append(total)

        reader = threading.Thread(target=read_all)
        reader.start()
        with socket.create_connection(server.getsockname()) as client:
            client.sendall(b"\0" * size)
        reader.join(timeout=30)
    assert received == [size]


def amount(sample: dict, before: dict, field: str) -> float:
    """What a rate of `sample` amounts to over its interval (the samples' own timestamps)."""
    return sample[field] * (sample["time"] - before["time"])


def test_rates_match_a_known_disk_write_and_loopback_transfer(tmp_path: Path):
    """64 MiB written with fsync (the host's disk counter: the process's own count stays 0 in some
    containers, the host's is what a node's operator watches) and 32 MiB sent over loopback
    (counted once sent and once received, on `lo`). Other processes of this machine add to the
    host's counters, so the upper bound is looser than the lower one; three tries absorb a burst."""
    sampler = SystemSampler("node-0", host_wide=True)
    for attempt in range(3):
        before = sampler.sample()
        write_and_sync(tmp_path / "known.bin", 64 * MIB)
        send_over_loopback(32 * MIB)
        after = sampler.sample()
        (tmp_path / "known.bin").unlink()
        disk = amount(after, before, "disk_write_bytes_per_s")
        sent, received = amount(after, before, "net_sent_bytes_per_s"), amount(after, before, "net_recv_bytes_per_s")
        print(f"attempt {attempt + 1}: disk {disk / MIB:.1f} MiB, net sent {sent / MIB:.1f} / received "
              f"{received / MIB:.1f} MiB over {after['time'] - before['time']:.2f} s")
        within = 0.95 * 64 * MIB <= disk <= 1.5 * 64 * MIB and all(
            0.98 * 32 * MIB <= value <= 1.3 * 32 * MIB for value in (sent, received))
        if within:
            break
    assert within, (disk / MIB, sent / MIB, received / MIB)
    assert set(after) >= NODE_KEYS and after["node"] == "node-0"
    assert after["host_cpus"] == os.cpu_count()
    assert 0 < after["ram_used_bytes"] < after["ram_total_bytes"]
    assert after["process_rss_bytes"] > 10 * MIB
    assert 0.0 <= after["cpu_percent"] <= 100.0


def test_gpu_fields_are_absent_without_a_gpu():
    if GpuReader.open() is not None:
        pytest.skip("this machine has an NVIDIA GPU (its fields are checked on the device machine)")
    sample = SystemSampler("node-0", host_wide=True).sample()
    assert "gpus" not in sample
    assert all("gpus" not in node for node in merge_nodes([sample]))


def test_a_node_is_its_host_figures_once_and_its_processes_summed():
    """torchrun's local rank 0 reads the host; every rank adds its own memory and tokens/s."""
    host = SystemSampler("node-0", host_wide=True)
    host.sample()
    time.sleep(0.05)
    rank0 = host.sample(tokens_per_second=1000.0)
    rank1 = SystemSampler("node-0", host_wide=False).sample(tokens_per_second=900.0)
    other_node = SystemSampler("node-1", host_wide=True).sample(tokens_per_second=500.0)
    assert set(rank1) == {"node", "process_rss_bytes", "tokens_per_second"}  # nothing host-wide twice
    nodes = merge_nodes([rank0, rank1, other_node])
    assert [n["node"] for n in nodes] == ["node-0", "node-1"]
    first = nodes[0]
    assert set(first) >= NODE_KEYS
    assert first["process_rss_bytes"] == rank0["process_rss_bytes"] + rank1["process_rss_bytes"]
    assert first["tokens_per_second"] == 1900.0
    assert first["net_sent_bytes_per_s"] == rank0["net_sent_bytes_per_s"]  # the host's rate, not doubled
    assert nodes[1]["tokens_per_second"] == 500.0


def test_sampling_is_cheap():
    """Well under a millisecond or two per sample (it runs once per log interval)."""
    sampler = SystemSampler("node-0", host_wide=True)
    started = time.perf_counter()
    for _ in range(50):
        sampler.sample(tokens_per_second=1.0)
    per_sample = (time.perf_counter() - started) / 50
    print(f"one sample: {per_sample * 1e3:.2f} ms")
    assert per_sample < 0.02
