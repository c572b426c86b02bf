"""The config contract: the reference config validates unchanged, bad configs name every problem."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cotrain.config import ConfigError, load_config
from tests.conftest import PYTHON, REFERENCE, REPO

COTRAIN = [PYTHON, "-m", "cotrain.cli"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COTRAIN, *args], capture_output=True, text=True, env=env, timeout=120)


def test_reference_config_validates_unchanged():
    config = load_config(REFERENCE / "session-config.toml")
    assert (config.model.type, config.model.size, config.model.precision) == ("llama2", "7B", "bf16")
    assert (config.train.batch_size, config.train.learning_rate, config.train.epochs) == (32, 1e-4, 10)
    assert config.train.optimizer == "adamw"
    assert (config.distributed.nodes, config.distributed.gpus_per_node, config.distributed.strategy) == (4, 8, "diloco")
    assert config.data.seq_length == 2048 and config.data.data_path == "/app/shared/datasets/processed"
    assert config.checkpoint.interval == 1000 and config.checkpoint.output_path == "/app/shared/models/checkpoints"
    assert config.session.id == "session-config"  # from the file's stem


def test_cli_validate_accepts_reference():
    result = cli("config", "validate", str(REFERENCE / "session-config.toml"))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_cli_validate_names_every_problem_at_once(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\ntype = "gpt"\nprecision = "fp8"\n[train]\nlerning_rate = 0.1\nbatch_size = -3\n')
    result = cli("config", "validate", str(bad))
    assert result.returncode == 2
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("- ")]
    assert len(lines) == 4, result.stderr
    assert any(line.startswith('- model.type = "gpt"') and "'llama2', 'llama3' or 'bert'" in line for line in lines)
    assert any(line.startswith('- model.precision = "fp8"') and "'bf16'" in line for line in lines)
    assert any(line.startswith("- train.lerning_rate = 0.1") and 'did you mean "learning_rate"' in line
               for line in lines)
    assert any(line.startswith("- train.batch_size = -3") and "greater than 0" in line for line in lines)
    assert "Traceback" not in result.stderr


def test_cross_field_problems_are_reported_together(tmp_path: Path):
    bad = tmp_path / "cross.toml"
    bad.write_text(
        '[model]\ntype = "llama3"\nsize = "7B"\n[train]\nbatch_size = 30\nmicro_batch_size = 4\n'
        '[distributed]\nstrategy = "diloco"\n[distributed.diloco]\ninner_steps = 300\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    problems = err.value.problems
    assert any(p.startswith('model.size = "7B"') and '"8B"' in p for p in problems)
    assert any(p.startswith("train.batch_size = 30") and "4 × 1" in p for p in problems)
    assert any(p.startswith("checkpoint.interval = 1000") and "inner_steps (300)" in p for p in problems)


def test_unreadable_toml_is_one_clear_line(tmp_path: Path):
    bad = tmp_path / "broken.toml"
    bad.write_text("[model\ntype = 'llama2'\n")
    result = cli("config", "validate", str(bad))
    assert result.returncode == 2 and "not valid TOML" in result.stderr and "Traceback" not in result.stderr
    result = cli("config", "validate", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_environment_and_set_overrides(tmp_path: Path):
    base = tmp_path / "run.toml"
    base.write_text("[train]\nlearning_rate = 1e-3\nbatch_size = 8\n")
    env = {"COTRAIN_TRAIN_LEARNING_RATE": "3e-4", "COTRAIN_DISTRIBUTED_DILOCO_INNER_STEPS": "50", "COTRAIN_HOME": "/x"}
    config = load_config(base, environ=env)
    assert config.train.learning_rate == 3e-4
    assert config.distributed.diloco.inner_steps == 50
    # --set wins over the environment
    config = load_config(base, environ=env, overrides=["train.learning_rate=5e-4", "model.precision=bf16"])
    assert config.train.learning_rate == 5e-4 and config.model.precision == "bf16"
    with pytest.raises(ConfigError) as err:
        load_config(base, environ={"COTRAIN_TRAIN_LEARNIN_RATE": "1"})
    assert "train.learnin_rate" in err.value.problems[0]
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(base, environ={}, overrides=["learning_rate"])


@pytest.mark.parametrize("template", sorted((REPO / "configs" / "templates").glob("*.toml")), ids=lambda p: p.stem)
def test_templates_validate(template: Path):
    config = load_config(template)
    assert template.read_text().startswith("#"), "every template starts with a comment header"
    assert config.session.id


def test_reference_copy_matches_shared():
    from tests.conftest import SHARED_REFERENCE

    copy = REPO / "tests" / "reference"
    if not SHARED_REFERENCE.is_dir():
        pytest.skip("../shared/reference is not beside this clone; the copy in tests/reference is used")
    for original in SHARED_REFERENCE.iterdir():
        assert (copy / original.name).read_bytes() == original.read_bytes(), f"tests/reference/{original.name} drifted"
