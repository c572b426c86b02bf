"""A checkpoint that does not fit on its disk (issue 18): a real 8 MiB tmpfs, filled with ballast.
The failed write leaves the earlier checkpoint whole and loadable, no partial folder, and one
sentence naming the folder and its free bytes; once space is freed the same save works."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cotrain.core import checkpoint as ckpt
from cotrain.disk_space import DiskFullError
from tests.small_disk import fill, small_disk


def trained_linear() -> tuple[nn.Linear, torch.optim.Optimizer]:
    """About 1 MiB of weights and 2 MiB of Adam state: three such checkpoints do not fit in 8 MiB."""
    model = nn.Linear(512, 512)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 512)).sum().backward()
    optimizer.step()
    return model, optimizer


def save(root: Path, step: int, model: nn.Linear, optimizer: torch.optim.Optimizer) -> Path:
    return ckpt.save_checkpoint(
        root, step, model_state=model.state_dict(), optimizer_state=optimizer.state_dict(), strategy_state={},
        trainer_state={"step": step}, keep=3,
    )


def assert_intact(path: Path, model: nn.Linear) -> None:
    loaded = nn.Linear(512, 512)
    ckpt.load_model_weights(path, loaded)
    assert torch.equal(loaded.weight, model.weight) and torch.equal(loaded.bias, model.bias)
    assert ckpt.load_optimizer_state(path)["state"]


@pytest.mark.parametrize("checked_in_advance", [True, False], ids=["refused-before-writing", "failed-mid-write"])
def test_a_checkpoint_that_does_not_fit_keeps_the_last_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checked_in_advance: bool
):
    with small_disk(tmp_path / "disk", size_mib=8) as disk:
        root = disk / "session"
        model, optimizer = trained_linear()
        first = save(root, 10, model, optimizer)
        ballast = fill(disk, leave_bytes=256 * 1024)
        if not checked_in_advance:  # let the write start and hit ENOSPC inside safetensors / torch.save
            monkeypatch.setattr(ckpt, "surely_too_small", lambda _root, _needed: False)

        later_model, later_optimizer = trained_linear()
        with pytest.raises(DiskFullError) as failed:
            save(root, 20, later_model, later_optimizer)

        sentence = str(failed.value)
        assert sentence.startswith("The disk is full:") and "\n" not in sentence
        assert str(root) in sentence and "bytes" in sentence and "free" in sentence
        assert "step-00000010" in sentence and "is kept" in sentence
        assert [c.step for c in ckpt.list_checkpoints(root)] == [10]
        assert sorted(p.name for p in root.iterdir()) == ["step-00000010"]  # the partial folder is gone
        assert_intact(first, model)

        with pytest.raises(DiskFullError):  # the same step again: the old copy is not removed first
            save(root, 10, later_model, later_optimizer)
        assert_intact(first, model)

        ballast.unlink()  # space returns: the next save works without anything else
        second = save(root, 20, later_model, later_optimizer)
        assert [c.step for c in ckpt.list_checkpoints(root)] == [10, 20]
        assert_intact(second, later_model)
        assert_intact(first, model)


def test_a_write_error_that_is_not_a_full_disk_is_left_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model, optimizer = trained_linear()

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("serializer bug")

    save(tmp_path, 10, model, optimizer)
    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(RuntimeError, match="serializer bug"):
        save(tmp_path, 20, model, optimizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000010"]
