"""The engine's GPU speed options, checked on CPU with the debug model: SDPA attention, fused
AdamW on CUDA, activation checkpointing and torch.compile (issue 13, "GPU speed")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cotrain.config import CotrainConfig, ModelConfig, TrainConfig, load_config
from cotrain.core.llm import (
    build_model,
    enable_activation_checkpointing,
    is_compiled,
    uses_activation_checkpointing,
)
from cotrain.core.optim import adam_kernel, build_optimizer
from cotrain.core.train import StopRequest, Trainer, token_cross_entropy
from cotrain.paths import Layout
from tests.conftest import tiny_config
from tests.core.test_train import events_of, losses_by_step, run_engine

VOCAB, SEQ = 256, 32


def debug_llama(family: str = "llama2", seed: int = 0) -> torch.nn.Module:
    return build_model(ModelConfig(type=family, size="debug"), vocab_size=VOCAB, seq_length=SEQ, special={}, seed=seed)


def batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, VOCAB, (n, SEQ + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def loss_of(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


def test_speed_options_are_off_by_default_and_settable(tmp_path: Path):
    train = TrainConfig()
    assert train.compile is False and train.activation_checkpointing is False
    config = tiny_config(tmp_path / "run.toml")
    loaded = load_config(config, overrides=["train.compile=true", "train.activation_checkpointing=true"])
    assert loaded.train.compile is True and loaded.train.activation_checkpointing is True


@pytest.mark.parametrize("family", ["llama2", "llama3"])
def test_llama_attention_runs_through_causal_sdpa(family: str, monkeypatch: pytest.MonkeyPatch):
    """Every layer calls torch's scaled_dot_product_attention with is_causal and no mask: the
    call that can dispatch to the flash kernel on a GPU."""
    model = debug_llama(family)
    assert model.config._attn_implementation == "sdpa"
    calls: list[dict] = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    inputs, targets = batch()
    loss_of(model, inputs, targets).backward()
    assert len(calls) == model.config.num_hidden_layers
    assert all(c["is_causal"] is True and c["attn_mask"] is None for c in calls)


def test_adam_uses_the_fused_kernel_only_when_every_parameter_is_on_cuda():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw"))
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]
    assert adam_kernel([]) == {"foreach": True}
    assert adam_kernel(list(model.parameters())) == {"foreach": True}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_adam_on_cuda_takes_the_foreach_step(name: str):
    fused_model, plain_model = debug_llama().cuda(), debug_llama().cuda()
    fused = build_optimizer(fused_model, TrainConfig(optimizer=name))
    plain = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    plain = plain(plain_model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.0, foreach=True)
    for group in fused.param_groups:
        group["weight_decay"] = 0.0
    assert fused.defaults["fused"] is True
    inputs, targets = (t.cuda() for t in batch())
    for model, optimizer in ((fused_model, fused), (plain_model, plain)):
        for _ in range(3):
            loss_of(model, inputs, targets).backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_activation_checkpointing_recomputes_layers_and_keeps_the_gradients():
    plain, checkpointed = debug_llama(), debug_llama()
    enable_activation_checkpointing(checkpointed)
    assert uses_activation_checkpointing(checkpointed) and not uses_activation_checkpointing(plain)

    inputs, targets = batch()
    results = []
    for model in (plain, checkpointed):
        model.train()
        mlp_calls = []
        # a pre-hook: the recompute stops as soon as it has re-saved what the backward needs
        model.model.layers[0].mlp.register_forward_pre_hook(lambda *_, calls=mlp_calls: calls.append(1))
        loss = loss_of(model, inputs, targets)
        forward_calls = len(mlp_calls)
        loss.backward()
        results.append((loss.detach(), forward_calls, len(mlp_calls)))
    (plain_loss, plain_fwd, plain_total), (ckpt_loss, ckpt_fwd, ckpt_total) = results
    assert (plain_fwd, plain_total) == (1, 1)
    assert (ckpt_fwd, ckpt_total) == (1, 2)  # the layer ran again in the backward pass
    torch.testing.assert_close(ckpt_loss, plain_loss)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("enabled", [False, True])
def test_the_trainer_applies_the_options_from_the_config(enabled: bool, tmp_path: Path):
    config = CotrainConfig(
        train=TrainConfig(compile=enabled, activation_checkpointing=enabled, device="cpu", max_steps=1)
    )
    trainer = Trainer(config, Layout(tmp_path), StopRequest())
    trainer.install_model(debug_llama())
    assert is_compiled(trainer.model) is enabled
    assert uses_activation_checkpointing(trainer.model) is enabled
    assert trainer.forward_kwargs == {"use_cache": False}
    assert (trainer.cross_entropy is not token_cross_entropy) is enabled  # compiled with the model
    if not enabled:  # (a compiled forward takes a while on CPU: the slow test below runs one)
        inputs, targets = batch()
        loss, _ = trainer._loss(inputs, targets)
        assert loss.item() == pytest.approx(token_cross_entropy(trainer.model(input_ids=inputs).logits, targets).item())


@pytest.mark.slow
def test_compiled_checkpointed_run_trains_like_the_eager_one(cotrain_home: Path, tmp_path: Path, monkeypatch):
    """The engine end to end with `compile` and `activation_checkpointing` on: inductor really
    compiles (its cache fills), the loss falls, and every logged loss matches the plain run's."""
    inductor_cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache))
    eager = tiny_config(tmp_path / "eager.toml", "eager", max_steps=12, interval=12, log_interval=3)
    assert run_engine(eager, cotrain_home).returncode == 0
    fast = tiny_config(tmp_path / "fast.toml", "fast", max_steps=12, interval=12, log_interval=3)
    fast.write_text(fast.read_text().replace("[train]\n", "[train]\ncompile = true\nactivation_checkpointing = true\n"))
    result = run_engine(fast, cotrain_home)
    assert result.returncode == 0, result.stderr[-3000:]

    assert any(inductor_cache.rglob("*.py")), "inductor generated no code: the model was not compiled"
    expected, got = losses_by_step(events_of(cotrain_home, "eager")), losses_by_step(events_of(cotrain_home, "fast"))
    assert got.keys() == expected.keys() == {3, 6, 9, 12}
    assert got[12] < got[3]
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-4), step
    final = events_of(cotrain_home, "fast")[-1]
    assert final["type"] == "completed"
    assert (Path(final["final_model_path"]) / "model.safetensors").exists()
