"""An honest DiLoCo peer refuses an absurd averaged update and a downloaded state nobody vouches for."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cotrain.core.strategies.sanity import MAX_AVERAGE_RATIO, averaged_update_problem, downloaded_state_problem


@dataclass
class Record:
    outer_step: int
    params_hash: str | None


def test_an_average_of_honest_updates_passes_and_an_absurd_or_non_finite_one_is_refused():
    own = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    others = [torch.randn(1000, generator=torch.Generator().manual_seed(i)) for i in (1, 2)]
    own_norm = float(own.norm())
    assert averaged_update_problem(torch.stack([own, *others]).mean(0), own_norm) is None
    huge = torch.stack([own, others[0], others[1] * 1e6]).mean(0)  # one member scaled its update a million times
    assert "a member sent an absurd update" in averaged_update_problem(huge, own_norm)
    assert averaged_update_problem(own * (MAX_AVERAGE_RATIO * 0.99), own_norm) is None
    nan = own.clone()
    nan[3] = math.nan
    assert averaged_update_problem(nan, own_norm) == "it holds 1 NaN or infinite values"
    assert averaged_update_problem(own * 1e6, 0.0) is None  # a peer that moved nothing cannot judge the size


def test_a_downloaded_state_must_hash_to_what_a_quorum_of_live_peers_publish():
    records = [Record(5, "aa"), Record(5, "aa"), Record(5, "bb"), Record(4, "cc"), Record(5, None)]
    assert downloaded_state_problem("aa", 5, records, needed=2) is None
    refused = downloaded_state_problem("bb", 5, records, needed=2)
    assert refused is not None and "which 1 live peer(s) publish for outer step 5; 2 are needed" in refused
    assert downloaded_state_problem("aa", 5, records, needed=3) is not None
    assert downloaded_state_problem("cc", 6, records, needed=1) is not None  # nobody at that step
