"""Learning-rate schedules and optimizer choice."""

from __future__ import annotations

import pytest
import torch

from cotrain.config import TrainConfig
from cotrain.core.optim import build_optimizer, lr_at


def test_warmup_then_cosine_to_the_floor():
    train = TrainConfig(learning_rate=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, train, 110) == pytest.approx(1e-4)
    assert lr_at(9, train, 110) == pytest.approx(1e-3)
    assert lr_at(60, train, 110) == pytest.approx(0.55e-3)  # half way: the mean of peak and floor
    assert lr_at(110, train, 110) == pytest.approx(1e-4)
    values = [lr_at(s, train, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_linear_and_constant():
    linear = TrainConfig(learning_rate=1.0, schedule="linear", min_lr_ratio=0.0)
    assert [lr_at(s, linear, 4) for s in (0, 2, 4)] == pytest.approx([1.0, 0.5, 0.0])
    constant = TrainConfig(learning_rate=0.5, schedule="constant")
    assert {lr_at(s, constant, 100) for s in range(100)} == {0.5}


@pytest.mark.parametrize("name,cls",
                         [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_optimizers_decay_matrices_only(name: str, cls: type):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.1))
    assert isinstance(optimizer, cls)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.ndim == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
