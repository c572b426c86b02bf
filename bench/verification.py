"""What verifying contributions costs: the validator's CPU time and every peer's extra bytes.

    python bench/verification.py [--quick] [--peers 3] [--inner-steps 50] [--rounds 3]

Runs real engine peers (`python -m cotrain.core.train`) of one DiLoCo session on loopback, the first with
`distributed.diloco.validate = true` (as the server's own peer of a rewarded session) auditing every member
every round (`audit_fraction = 1`), the tiny debug model, deterministic on the CPU (so spot checks run).
Reports, from the peers' own event streams:
- validator CPU seconds per judged peer-round (the `verdict` events' `cpu_seconds`: scoring every member's
  update on its own shard, a control shard and held-out samples, and the spot checks), and the wall time of
  a round's validation against the time between rounds: under 1 means validation keeps up with training;
- per peer, the extra bytes it sends for verification — its signed commitment and receipt of every round
  (their stored size, × the DHT's replication factor) and what it served to the validator (its updates, the
  states of its spot checks) — as a fraction of the bytes its averager sent (target: under 5%), measured
  with every member audited and scaled to the default `audit_fraction` (what is served is per audit).

Prints a table and writes bench/results/verification.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds a platform.py that would shadow the standard library's when run as a script
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from collections import Counter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.diloco_vs_ddp import BASE, engine_env, make_home, read_events  # noqa: E402

from cotrain.config.schema import DilocoConfig  # noqa: E402

RESULTS = REPO / "bench" / "results" / "verification.json"
SPOT_CHECKED = {"COTRAIN_TRAIN_DETERMINISTIC": "true", "COTRAIN_TRAIN_DEVICE": "cpu"}  # spot checks replay CPU steps
DEFAULT_AUDIT = DilocoConfig.model_fields["audit_fraction"].default
DHT_REPLICAS = 5  # hivemind stores every record on its key's 5 nearest nodes (DHTNode num_replicas)
RECORD_OVERHEAD = 700  # bytes beside the value of a signed record: the owner's RSA key, its signature, the key

DILOCO = """
[distributed.diloco]
inner_steps = {inner_steps}
initial_peers = {initial_peers}
host_maddrs = ["/ip4/127.0.0.1/tcp/0"]
min_peers = {peers}
matchmaking_time = 2.0
averaging_timeout = 60.0
progress_interval = 1.0
validate = {validate}
audit_fraction = 1.0
"""


def run_session(root: Path, datasets: Path, peers: int, inner_steps: int, rounds: int, batch: int) -> list[list[dict]]:
    """Each peer's events of one session (the validator's first)."""
    from cotrain.p2p.dht import start_dht, visible_maddrs

    bootstrap = start_dht()
    session, steps = "verification", inner_steps * rounds
    procs = []
    try:
        for peer in range(peers):
            home = make_home(root, f"peer{peer}", datasets)
            config = root / f"peer{peer}.toml"
            config.write_text(
                BASE.format(session=session, size="debug", batch=batch, steps=steps, lr=3e-3, eval_batches=4,
                            seed=0, max_bytes=2_000_000, strategy="diloco", gpus=1)
                + DILOCO.format(inner_steps=inner_steps, initial_peers=json.dumps(visible_maddrs(bootstrap)),
                                peers=peers, validate="true" if peer == 0 else "false")
            )
            log = (root / f"peer{peer}.log").open("w")
            procs.append((home, subprocess.Popen([sys.executable, "-m", "cotrain.core.train", "--config", str(config)],
                                                 env={**engine_env(home), **SPOT_CHECKED},
                                                 stdout=subprocess.DEVNULL, stderr=log)))
        codes = [proc.wait() for _, proc in procs]
        if any(codes):
            tails = "\n".join((root / f"peer{p}.log").read_text()[-2000:] for p in range(peers))
            raise RuntimeError(f"peers exited with {codes}:\n{tails}")
        return [read_events(home, session) for home, _ in procs]
    finally:
        for _, proc in procs:
            proc.kill()
        bootstrap.shutdown()


def record_bytes(value: dict) -> int:
    """What storing one signed record on the DHT sends: its serialized value and signature, to each replica."""
    from hivemind.utils.serializer import MSGPackSerializer

    return (len(MSGPackSerializer.dumps(value)) + RECORD_OVERHEAD) * DHT_REPLICAS


def measure(events: list[list[dict]]) -> dict:
    verdict_events = [e for e in events[0] if e["type"] == "verdict"]
    if not verdict_events:
        raise RuntimeError("the validator judged no round; see peer0.log")
    judged = sum(len(e["verdicts"]) for e in verdict_events)
    verified = sum(v["reason"] == "verified" for e in verdict_events for v in e["verdicts"])
    reasons = Counter(v["reason"] for e in verdict_events for v in e["verdicts"])
    details = sorted({v["detail"] for e in verdict_events for v in e["verdicts"] if v["reason"] != "verified"})
    outer = [e for e in events[0] if e["type"] == "progress" and "outer_step" in e]
    gaps = [b["time"] - a["time"] for a, b in zip(outer, outer[1:])]
    per_peer = []
    for peer_events in events:
        last = [e for e in peer_events if e["type"] == "progress" and "outer_step" in e][-1]
        peer_id = next(e["peer_id"] for e in peer_events if e["type"] == "started")
        records = sum(record_bytes(evidence[kind][peer_id]) for e in verdict_events
                      for kind, evidence in (("commitments", e["evidence"]), ("receipts", e["evidence"]))
                      if peer_id in evidence[kind])
        served = int((last.get("verification_bytes") or [0, 0])[0])
        averaging = int(last["bytes_sent"])
        per_peer.append({"peer_id": peer_id, "averaging_bytes_sent": averaging, "record_bytes": records,
                         "served_to_validator_bytes": served,
                         "extra_fraction_all_audited": round((records + served) / max(averaging, 1), 4),
                         "extra_fraction": round((records + DEFAULT_AUDIT * served) / max(averaging, 1), 4)})
    return {
        "rounds_judged": len(verdict_events),
        "peer_rounds_judged": judged,
        "peer_rounds_verified": verified,
        "reasons": dict(reasons),
        "not_verified_because": details,
        "validator_cpu_seconds_per_peer_round": round(sum(e["cpu_seconds"] for e in verdict_events) / judged, 4),
        "validation_wall_seconds_per_round": round(statistics.fmean(e["seconds"] for e in verdict_events), 3),
        "seconds_between_rounds": round(statistics.fmean(gaps), 3) if gaps else None,
        "peers": per_peer,
        "max_extra_fraction": max(p["extra_fraction"] for p in per_peer),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="H = 20, 2 rounds (about a minute)")
    parser.add_argument("--peers", type=int, default=3)
    parser.add_argument("--inner-steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    inner_steps, rounds = (20, 2) if args.quick else (args.inner_steps, args.rounds)
    with tempfile.TemporaryDirectory(prefix="cotrain-bench-verification-") as tmp:
        root = Path(tmp)
        datasets = root / "datasets"
        datasets.mkdir()
        started = time.monotonic()
        result = measure(run_session(root, datasets, args.peers, inner_steps, rounds, args.batch))
    result.update(peers_count=args.peers, inner_steps=inner_steps, rounds=rounds, batch=args.batch,
                  wall_seconds=round(time.monotonic() - started, 1))
    keeps_up = result["seconds_between_rounds"] and \
        result["validation_wall_seconds_per_round"] < result["seconds_between_rounds"]
    result["validation_keeps_up"] = bool(keeps_up)
    print(f"{args.peers} peers, H = {inner_steps}, {rounds} rounds: {result['peer_rounds_verified']} of "
          f"{result['peer_rounds_judged']} peer-rounds verified {result['reasons']}")
    for detail in result["not_verified_because"]:
        print(f"  not verified: {detail}")
    print(f"validator CPU seconds per peer-round: {result['validator_cpu_seconds_per_peer_round']:.3f}; "
          f"validation {result['validation_wall_seconds_per_round']:.2f} s per round of "
          f"{result['seconds_between_rounds']} s (keeps up: {result['validation_keeps_up']})")
    print(f"{'peer':14} {'averaging MB':>12} {'records KB':>10} {'served MB':>9} {'extra, all audited':>18} "
          f"{f'extra at {DEFAULT_AUDIT:.1%} audited':>20}")
    for peer in result["peers"]:
        print(f"{peer['peer_id'][-12:]:14} {peer['averaging_bytes_sent'] / 1e6:12.2f} "
              f"{peer['record_bytes'] / 1e3:10.1f} {peer['served_to_validator_bytes'] / 1e6:9.2f} "
              f"{100 * peer['extra_fraction_all_audited']:17.2f}% {100 * peer['extra_fraction']:19.2f}%")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
