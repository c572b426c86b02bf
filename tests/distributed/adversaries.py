"""Dishonest DiLoCo peers for the verification tests: the real engine (`cotrain join ...`) with one method of
`DilocoStrategy` replaced, the way someone who edits their copy of CoTrain would cheat.

    python -m tests.distributed.adversaries KIND join --server URL --session ID ...

KIND:
- copycat: trains, then throws its update away and commits and averages another peer's committed update
  (downloaded from that peer as a validator would);
- noise: commits and averages a random pseudo-gradient of the same norm as its real one;
- huge: commits and averages its real pseudo-gradient scaled a million times;
- wrong_shard: trains on a shard that is not the one the public seed gave it, and says it is;
- zero_work: publishes progress records that keep pace with the others' rounds but never commits or averages.
"""

from __future__ import annotations

import sys
import time

import torch

from cotrain.core.shards import shard_seed
from cotrain.core.strategies.diloco import DilocoStrategy
from cotrain.core.strategies.verified_rounds import RoundWork

COPY_WAIT = 60.0  # seconds the copycat waits for someone else's commitment of the round


def copycat() -> None:
    honest_commit = DilocoStrategy._commit

    def _commit(self, round_):
        from cotrain.p2p.round_records import fetch_commitments

        deadline = time.monotonic() + COPY_WAIT
        while time.monotonic() < deadline:
            for peer in sorted(fetch_commitments(self.dht, self.session_id, round_)):
                if peer == self.peer_id:
                    continue
                got = self.averager.download_update(peer, timeout=5.0, round_=round_)
                if got is not None and got[0] == round_:
                    with torch.no_grad(), self.averager.get_tensors() as (flat,):
                        flat.copy_(got[1])
                    print(f"adversary copycat: round {round_} is {peer}'s update", file=sys.stderr, flush=True)
                    return honest_commit(self, round_)
            time.sleep(0.2)
        return honest_commit(self, round_)

    DilocoStrategy._commit = _commit  # type: ignore[method-assign]


def noise() -> None:
    honest_fill = DilocoStrategy._fill_pseudo_gradient

    def _fill_pseudo_gradient(self):
        honest_fill(self)
        with torch.no_grad(), self.averager.get_tensors() as (flat,):
            norm = float(flat.norm())
            random = torch.randn_like(flat)
            flat.copy_(random * (norm / max(float(random.norm()), 1e-12)))

    DilocoStrategy._fill_pseudo_gradient = _fill_pseudo_gradient  # type: ignore[method-assign]


def huge() -> None:
    honest_fill = DilocoStrategy._fill_pseudo_gradient

    def _fill_pseudo_gradient(self):
        honest_fill(self)
        with torch.no_grad(), self.averager.get_tensors() as (flat,):
            flat.mul_(1e6)

    DilocoStrategy._fill_pseudo_gradient = _fill_pseudo_gradient  # type: ignore[method-assign]


def wrong_shard() -> None:
    def seed_for(self, round_, base_hash):
        return shard_seed(self.session_id, round_, base_hash, f"{self.peer_id}-elsewhere")

    RoundWork.seed_for = seed_for  # type: ignore[method-assign]


def zero_work() -> None:
    def _outer_round(self):
        round_ = self.outer_step + 1
        self.ready_round = round_
        self.publisher.publish_now()
        # keep pace: wait until the others finished the round, then claim it, without averaging or committing
        deadline = time.monotonic() + COPY_WAIT
        while time.monotonic() < deadline and not any(r.outer_step >= round_ for r in self._live_records()):
            time.sleep(0.2)
        self.outer_step = round_
        self.publisher.publish_now()
        return None

    DilocoStrategy._outer_round = _outer_round  # type: ignore[method-assign]


KINDS = {"copycat": copycat, "noise": noise, "huge": huge, "wrong_shard": wrong_shard, "zero_work": zero_work}


def main(argv: list[str]) -> None:
    kind, *cli_args = argv
    KINDS[kind]()
    print(f"adversary {kind}", file=sys.stderr, flush=True)
    from cotrain.cli import main as cotrain_main

    sys.argv = ["cotrain", *cli_args]
    cotrain_main()


if __name__ == "__main__":
    main(sys.argv[1:])
