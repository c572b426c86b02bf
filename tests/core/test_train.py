"""The engine end to end, as real processes: events, checkpoints, resume after kill -9 and
SIGTERM, the exported model, bert, mixed precision, and the tiny-cpu template's loss drop."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, engine_env, tiny_config, wait_until

PROGRESS_FIELDS = {"session_id", "step", "total_steps", "progress", "loss", "participants", "metrics"}
METRIC_FIELDS = {
    "accuracy", "learning_rate", "batch_size", "tokens_per_second", "samples_per_second", "step_time", "mfu",
    "memory_bytes",
}


def train_cmd(config: Path) -> list[str]:
    return [PYTHON, "-m", "cotrain.core.train", "--config", str(config)]


def run_engine(config: Path, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(train_cmd(config), capture_output=True, text=True, env=engine_env(home), timeout=timeout)


def events_of(home: Path, session: str) -> list[dict]:
    path = home / "logs" / "training" / session / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses_by_step(events: list[dict]) -> dict[int, float]:
    """The loss of every logged step; a step run twice (before a crash and after resume) keeps the
    later value, which is what the resumed run produced."""
    return {e["step"]: e["loss"] for e in events if e["type"] == "progress"}



def test_tiny_run_writes_events_checkpoints_and_a_loadable_model(cotrain_home: Path, tmp_path: Path):
    config = tiny_config(tmp_path / "tiny.toml", "tiny", max_steps=30, interval=10)
    result = run_engine(config, cotrain_home)
    assert result.returncode == 0, result.stderr[-3000:]

    events = events_of(cotrain_home, "tiny")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types[0] == "started" and types[-1] == "completed"
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == list(range(1, 31))
    for event in progress:
        assert PROGRESS_FIELDS <= event.keys() and METRIC_FIELDS <= event["metrics"].keys()
        assert 0 < event["progress"] <= 100 and event["participants"] == 1
        assert event["metrics"]["tokens_per_second"] > 0 and 0 <= event["metrics"]["accuracy"] <= 1
    assert progress[-1]["progress"] == 100
    assert {e["step"] for e in events if e["type"] == "checkpoint"} == {10, 20, 30}
    assert any(e["type"] == "eval" and e["val_perplexity"] > 1 for e in events)

    status = json.loads((cotrain_home / "logs" / "training" / "tiny" / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == 30 and status["seq"] == events[-1]["seq"]

    checkpoints = sorted(p.name for p in (cotrain_home / "models" / "checkpoints" / "tiny").iterdir())
    assert checkpoints == ["step-00000010", "step-00000020", "step-00000030"]  # keep = 3
    newest = cotrain_home / "models" / "checkpoints" / "tiny" / "step-00000030"
    assert {p.name for p in newest.iterdir()} >= {"model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"}

    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = cotrain_home / "models" / "final" / "tiny"
    model = AutoModelForCausalLM.from_pretrained(final, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(final, local_files_only=True)
    prompt = tokenizer("def ", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(out[0]), str)
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["val_loss"] > 0 and metrics["tokens_seen"] == 30 * 8 * 64


def test_resume_after_kill_9_matches_an_uninterrupted_run(cotrain_home: Path, tmp_path: Path):
    steps = 150
    reference = tiny_config(tmp_path / "ref.toml", "ref", max_steps=steps, interval=25)
    assert run_engine(reference, cotrain_home).returncode == 0
    expected = losses_by_step(events_of(cotrain_home, "ref"))

    crashed = tiny_config(tmp_path / "crash.toml", "crash", max_steps=steps, interval=25)
    proc = subprocess.Popen(train_cmd(crashed), env=engine_env(cotrain_home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(e["type"] == "checkpoint" for e in events_of(cotrain_home, "crash")), 120,
                   "a checkpoint")
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(e["step"] for e in events_of(cotrain_home, "crash") if e["type"] == "progress")
    assert killed_at < steps, "the run finished before it could be killed"

    result = run_engine(crashed, cotrain_home)
    assert result.returncode == 0, result.stderr[-3000:]
    events = events_of(cotrain_home, "crash")
    restarts = [e for e in events if e["type"] == "started"]
    assert len(restarts) == 2
    resumed_step = restarts[1]["step"]
    assert 0 < resumed_step <= killed_at and resumed_step % 25 == 0
    assert restarts[1]["resumed_from"].endswith(f"step-{resumed_step:08d}")
    assert losses_by_step(events) == expected  # bit-identical loss curve, every step


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(cotrain_home: Path, tmp_path: Path):
    config = tiny_config(tmp_path / "term.toml", "term", max_steps=2000, interval=1000)
    proc = subprocess.Popen(train_cmd(config), env=engine_env(cotrain_home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_until(lambda: any(e["type"] == "progress" for e in events_of(cotrain_home, "term")), 120, "progress", 0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    events = events_of(cotrain_home, "term")
    last = events[-1]
    assert last["type"] == "failed" and last["interrupted"] and last["signal"] == "SIGTERM"
    stopped_at = last["step"]
    assert events[-2]["type"] == "checkpoint" and events[-2]["step"] == stopped_at

    resumed = subprocess.Popen(train_cmd(config), env=engine_env(cotrain_home), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        started = wait_until(lambda: [e for e in events_of(cotrain_home, "term") if e["type"] == "started"][1:], 120,
                             "the resumed run to start", 0.05)
        assert started[0]["step"] == stopped_at and started[0]["resumed_from"].endswith(f"{stopped_at:08d}")
    finally:
        resumed.kill()
        resumed.wait()


def test_bert_masked_lm_trains_and_exports(cotrain_home: Path, tmp_path: Path):
    config = tiny_config(tmp_path / "bert.toml", "bert", model_type="bert", max_steps=20, interval=20, log_interval=5)
    result = run_engine(config, cotrain_home)
    assert result.returncode == 0, result.stderr[-3000:]
    completed = events_of(cotrain_home, "bert")[-1]
    assert completed["type"] == "completed" and 0 <= completed["val_accuracy"] <= 1

    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(cotrain_home / "models" / "final" / "bert", local_files_only=True)
    assert model.config.model_type == "bert"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(cotrain_home: Path, tmp_path: Path, precision: str):
    config = tiny_config(tmp_path / f"{precision}.toml", precision, max_steps=10, interval=10, log_interval=5)
    text = config.read_text().replace('precision = "fp32"', f'precision = "{precision}"')
    config.write_text(text)
    result = run_engine(config, cotrain_home)
    assert result.returncode == 0, result.stderr[-3000:]
    progress = [e for e in events_of(cotrain_home, precision) if e["type"] == "progress"]
    assert progress[-1]["loss"] < progress[0]["loss"] + 1.0 and all(p["loss"] == p["loss"] for p in progress)


def test_bad_data_path_fails_with_a_clear_message(cotrain_home: Path, tmp_path: Path):
    config = tiny_config(tmp_path / "nodata.toml", "nodata", max_steps=5)
    config.write_text(config.read_text().replace('dataset = "stdlib"', f'data_path = "{tmp_path / "missing"}"'))
    result = run_engine(config, cotrain_home)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    failed = events_of(cotrain_home, "nodata")[-1]
    assert failed["type"] == "failed" and "does not exist" in failed["error"]


@pytest.mark.slow
def test_tiny_cpu_template_loss_falls_by_30_percent(cotrain_home: Path):
    """The README's first run: `cotrain train configs/templates/tiny-cpu.toml`."""
    result = subprocess.run(
        [PYTHON, "-m", "cotrain.cli", "train", str(REPO / "configs" / "templates" / "tiny-cpu.toml")],
        capture_output=True, text=True, env=engine_env(cotrain_home), timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    progress = [e for e in events_of(cotrain_home, "tiny-cpu") if e["type"] == "progress"]
    first, last = progress[0]["loss"], progress[-1]["loss"]
    assert last <= 0.7 * first, (first, last)


def test_accumulation_sgd_and_starting_from_a_local_pretrained_model(cotrain_home: Path, tmp_path: Path):
    """micro_batch_size < batch_size accumulates gradients; sgd trains; `model.path` starts from
    a model this engine exported (its own tokenizer comes along)."""
    first = tiny_config(tmp_path / "base.toml", "base", max_steps=30, interval=30, log_interval=3)
    first.write_text(first.read_text().replace("batch_size = 8\n", "batch_size = 8\nmicro_batch_size = 2\n"))
    result = run_engine(first, cotrain_home)
    assert result.returncode == 0, result.stderr[-3000:]

    final = cotrain_home / "models" / "final" / "base"
    tuned = tiny_config(tmp_path / "tuned.toml", "tuned", max_steps=6, interval=6, log_interval=3)
    text = tuned.read_text().replace('size = "debug"', f'size = "debug"\npath = "{final}"')
    tuned.write_text(text.replace('learning_rate = 3e-3', 'learning_rate = 1e-2\noptimizer = "sgd"'))
    result = run_engine(tuned, cotrain_home)
    assert result.returncode == 0, result.stderr[-3000:]
    started = next(e for e in events_of(cotrain_home, "tuned") if e["type"] == "started")
    base_started = next(e for e in events_of(cotrain_home, "base") if e["type"] == "started")
    assert started["num_parameters"] == base_started["num_parameters"]
    base = [e["loss"] for e in events_of(cotrain_home, "base") if e["type"] == "progress"]
    tuned_first = [e for e in events_of(cotrain_home, "tuned") if e["type"] == "progress"][0]["loss"]
    assert base[-1] < base[0] - 0.3  # the base run learned something ...
    assert tuned_first < base[0] - 0.3  # ... and the tuned run starts from it, not from random init
