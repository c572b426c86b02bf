"""Platform benchmark: a real `cotrain up` server on loopback, measured from the outside.

    python bench/platform.py [--quick]

1. event_to_ws_ms: a real engine run (tiny llama, a progress event every step); for each
   `training.progress` a WebSocket client receives, the delay from the engine's event `time`
   (when it wrote the line) to the moment the client has the message. p50/p95/p99.
2. api: `--clients` concurrent HTTP clients (default 100) alternate GET session / GET list for a
   fixed time, back to back (saturation); requests per second, p99 latency, errors. Then the same
   clients paced at 1, 2, 3, 4, 6, ... requests per second each, up to the rate where p99 passes 50 ms.
3. ws_subscribers: `--subscribers` WebSocket clients (default 1000) subscribe to one session;
   one status change is made; did every one receive it?

Writes bench/results/platform.json. `--quick` finishes in a few minutes on 2 cores.
Targets: event to browser p95 < 250 ms, API p99 < 50 ms, 1000 subscribers all served.
"""

from __future__ import annotations

# ruff: noqa: E402
import sys

# This file is named like the stdlib `platform` module: keep its folder off the import path so
# `import platform` (done by uuid, click, ...) finds the real one.
if sys.path and sys.path[0].endswith("bench"):
    sys.path.pop(0)

import argparse
import asyncio
import json
import os
import platform as py_platform
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import websockets

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "platform.json"
TOKEN = "ct_bench_token_not_secret"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(COTRAIN_HOME=str(home), COTRAIN_ADMIN_TOKEN=TOKEN, COTRAIN_START_DHT="0", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               # the subscriber bench opens 1000 anonymous subscriptions from one address in seconds
               COTRAIN_RATE_WS_SUBSCRIBE="100000/minute")
    for key in ("DATABASE_URL", "REDIS_URL"):
        env.pop(key, None)
    cotrain = Path(sys.executable).with_name("cotrain")
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen([str(cotrain), "up", "--port", str(port), "--log-level", "warning"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the server did not start; see {home / 'server.log'}")


def session_body(steps: int, auto_start: bool = True) -> dict:
    return {
        "name": "bench", "autoStart": auto_start,
        "modelConfig": {"type": "llama2", "size": "debug", "precision": "fp32"},
        "trainingConfig": {"batchSize": 8, "learningRate": 0.003, "maxSteps": steps, "logInterval": 1,
                           "evalInterval": 10_000},
        "distributedConfig": {"nodes": 1, "gpusPerNode": 1, "strategy": "ddp"},
        "dataConfig": {"dataset": "stdlib", "seqLength": 64, "maxBytes": 300000, "vocabSize": 512},
        "checkpointConfig": {"interval": 10_000},
    }


async def event_to_ws(base: str, ws_url: str, steps: int) -> dict:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as api:
        # a draft first, so the client is subscribed before the engine writes its first event
        sid = (await api.post("/sessions", json=session_body(steps, auto_start=False))).json()["id"]
        delays: list[float] = []
        async with websockets.connect(ws_url, max_size=None) as ws:
            await ws.send(json.dumps({"action": "subscribe", "sessionId": sid}))
            await api.post(f"/sessions/{sid}/start")
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 300))
                received = time.time()
                data = message["data"]
                if message["event"] == "training.progress" and data.get("time"):
                    delays.append((received - data["time"]) * 1000)
                if message["event"] == "training.status" and data.get("status") in ("completed", "failed", "cancelled"):
                    break
    return {"p50": round(percentile(delays, 50), 2), "p95": round(percentile(delays, 95), 2),
            "p99": round(percentile(delays, 99), 2), "samples": len(delays), "session": sid}


async def api_load(base: str, clients: int, seconds: float, session_id: str, interval: float = 0.0) -> dict:
    """`clients` concurrent keep-alive clients alternating GET session / GET list. interval=0: each
    sends its next request as soon as the last answered (saturation); else one request every
    `interval` seconds per client (a paced, realistic load). aiohttp is the client: httpx's pool
    costs more CPU than the server under 100 connections, which would measure the client."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds
    paths = (f"{base}/sessions/{session_id}", f"{base}/sessions?limit=10")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:
        async def client(i: int) -> None:
            nonlocal errors
            n = i
            await asyncio.sleep(interval * i / clients)  # spread paced clients over the interval
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                try:
                    async with http.get(paths[n % 2]) as response:
                        await response.read()
                        if response.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                took = time.perf_counter() - start
                latencies.append(took * 1000)
                n += 1
                if interval:
                    await asyncio.sleep(max(0.0, interval - took))

        began = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.monotonic() - began
    return {"clients": clients, "requests": len(latencies), "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2),
            "errors": errors, "interval_s": interval}


async def paced_sweep(base: str, clients: int, seconds: float, session_id: str) -> dict:
    """The same clients, each pacing its requests at 1, 2, 3, 4, 6, ... per second, until p99 passes 50 ms.
    Back to back, N clients wait N / throughput on average whatever the server does (Little's law),
    so this is the figure that says how much traffic 100 clients can send with p99 under 50 ms."""
    steps, capacity = [], 0.0
    for per_client_rps in (1, 2, 3, 4, 6, 8, 12, 16):
        step = await api_load(base, clients, seconds, session_id, interval=1 / per_client_rps)
        step["per_client_rps"] = per_client_rps
        steps.append(step)
        print(f"API, {clients} clients at {per_client_rps} req/s each: {step['requests_per_s']} req/s, "
              f"p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms, {step['errors']} errors")
        if step["p99_ms"] >= 50 or step["errors"]:
            break
        capacity = step["requests_per_s"]
    return {"steps": steps, "requests_per_s_with_p99_under_50ms": capacity}


async def many_subscribers(base: str, ws_url: str, count: int) -> dict:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as api:
        sid = (await api.post("/sessions", json=session_body(10, auto_start=False))).json()["id"]
        sockets = []
        connected = 0
        for batch_start in range(0, count, 100):  # connect in batches of 100
            async def open_one():
                ws = await websockets.connect(ws_url, max_size=None, open_timeout=60)
                await ws.send(json.dumps({"action": "subscribe", "sessionId": sid}))
                ack = json.loads(await asyncio.wait_for(ws.recv(), 60))
                assert ack["event"] == "subscribed", ack
                return ws
            results = await asyncio.gather(*(open_one() for _ in range(min(100, count - batch_start))),
                                           return_exceptions=True)
            for r in results:
                if isinstance(r, Exception):
                    continue
                sockets.append(r)
                connected += 1
        began = time.time()
        await api.patch(f"/sessions/{sid}", json={"name": "bench renamed"})  # one training.status message

        async def receive(ws) -> float | None:
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), 30))
                return time.time() if message["data"].get("updated") else None
            except Exception:
                return None

        got = await asyncio.gather(*(receive(ws) for ws in sockets))
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    received = [t for t in got if t is not None]
    return {"requested": count, "connected": connected, "received": len(received),
            "all_received": connected == count and len(received) == count,
            "last_delivery_ms": round((max(received) - began) * 1000, 1) if received else None}


async def main_async(args: argparse.Namespace) -> dict:
    home = Path(tempfile.mkdtemp(prefix="cotrain-bench-"))
    port = free_port()
    base, ws_url = f"http://127.0.0.1:{port}/api/v1", f"ws://127.0.0.1:{port}/ws"
    server = start_server(home, port)
    try:
        print(f"server on {base} (COTRAIN_HOME={home})")
        latency = await event_to_ws(base, ws_url, args.steps)
        print(f"event -> WebSocket: p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms "
              f"({latency['samples']} progress events)")
        api = await api_load(base, args.clients, args.api_seconds, latency["session"])
        print(f"API, {api['clients']} clients back to back: {api['requests_per_s']} req/s, p50 {api['p50_ms']} ms, "
              f"p99 {api['p99_ms']} ms, {api['errors']} errors")
        api["paced"] = await paced_sweep(base, args.clients, args.api_seconds / 2, latency["session"])
        subs = await many_subscribers(base, ws_url, args.subscribers)
        print(f"WebSocket subscribers: {subs['connected']}/{subs['requested']} connected, "
              f"{subs['received']} received the message (all: {subs['all_received']}), "
              f"last after {subs['last_delivery_ms']} ms")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    return {
        "event_to_ws_ms": latency, "api": api, "ws_subscribers": subs,
        "targets": {"event_to_ws_p95_ms": 250, "api_p99_ms": 50, "ws_subscribers": 1000},
        "met": {"event_to_ws": latency["p95"] < 250,
                "api_back_to_back": api["p99_ms"] < 50 and api["errors"] == 0,
                "api_paced_2rps": any(r["per_client_rps"] == 2 and r["p99_ms"] < 50 and not r["errors"]
                                      for r in api["paced"]["steps"]),
                "ws_subscribers": subs["all_received"]},
        "settings": {"quick": args.quick, "steps": args.steps, "api_seconds": args.api_seconds},
        "machine": {"cpus": os.cpu_count(), "python": py_platform.python_version(), "platform": py_platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="Fewer steps and a shorter API load (a few minutes on 2 cores).")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None, help="Engine steps (one progress event each).")
    parser.add_argument("--api-seconds", type=float, default=None)
    args = parser.parse_args()
    args.steps = args.steps or (150 if args.quick else 500)
    args.api_seconds = args.api_seconds or (10.0 if args.quick else 30.0)
    result = asyncio.run(main_async(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
