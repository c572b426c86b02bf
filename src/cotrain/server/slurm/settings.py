"""The Slurm executor's settings (`COTRAIN_EXECUTOR=slurm`, or `cotrain worker --executor slurm`):
where its jobs go and what they may use. Each field's description is its variable's documentation
(the README's "slurm" table is generated from them, see server/env_reference.py)."""

from __future__ import annotations

import shlex
from typing import Annotated, Any

from pydantic import BeforeValidator, field_validator
from pydantic_settings import NoDecode

from cotrain.config.env_settings import CommaList, EnvSettings, OnUnlessOff, env_field


def _sbatch_options(value: Any) -> Any:
    """COTRAIN_SLURM_EXTRA_SBATCH: options as on sbatch's command line (`--mem=16G --constraint=a100`),
    or one per line, with or without their `#SBATCH ` prefix."""
    if not isinstance(value, str):
        return value
    options: list[str] = []
    for line in value.splitlines():
        line = line.strip()
        if line.startswith("#SBATCH"):
            line = line[len("#SBATCH"):].strip()
        try:
            words = shlex.split(line)
        except ValueError:
            raise ValueError(f"COTRAIN_SLURM_EXTRA_SBATCH has an unbalanced quote in {line!r}; fix the quoting or "
                             "unset it.") from None
        for word in words:
            if not word.startswith("-"):
                raise ValueError(f"COTRAIN_SLURM_EXTRA_SBATCH: {word!r} is not an sbatch option; write options such "
                                 "as --mem=16G --constraint=a100 (one `--name=value` each).")
            options.append(word)
    return options


class SlurmSettings(EnvSettings):
    """Where a Slurm worker's jobs go. Empty values leave the choice to Slurm (its default partition,
    the user's default account, ...)."""

    partition: str | None = env_field("COTRAIN_SLURM_PARTITION", None, "the partition jobs are submitted to",
                                      shown="Slurm's default")
    account: str | None = env_field("COTRAIN_SLURM_ACCOUNT", None, "the account jobs are charged to",
                                    shown="the user's default")
    qos: str | None = env_field("COTRAIN_SLURM_QOS", None, "the quality of service of jobs", shown="Slurm's default")
    time_limit: str | None = env_field(
        "COTRAIN_SLURM_TIME_LIMIT", None,
        "a job's time limit, as sbatch's `--time` (`2-00:00:00`); a run stopped by it resumes from its checkpoint "
        "in a new job; also the longest `slurmConfig.timeLimit` a session may ask for", shown="the partition's")
    # what a maintainer may narrow a session to (`slurmConfig`, slurm/session_options.py)
    partitions: CommaList = env_field(
        "COTRAIN_SLURM_PARTITIONS", list,
        "partitions a maintainer may pick for a session (`slurmConfig.partition`), comma-separated",
        shown="`COTRAIN_SLURM_PARTITION` only")
    accounts: CommaList = env_field(
        "COTRAIN_SLURM_ACCOUNTS", list,
        "accounts a maintainer may pick for a session (`slurmConfig.account`), comma-separated",
        shown="`COTRAIN_SLURM_ACCOUNT` only")
    qos_list: CommaList = env_field(
        "COTRAIN_SLURM_QOS_LIST", list,
        "qualities of service a maintainer may pick for a session (`slurmConfig.qos`), comma-separated",
        shown="`COTRAIN_SLURM_QOS` only")
    extra_sbatch: Annotated[list[str], NoDecode, BeforeValidator(_sbatch_options)] = env_field(
        "COTRAIN_SLURM_EXTRA_SBATCH", list,
        "more `#SBATCH` options for every job (`--mem=64G --constraint=a100`; one per line also works)",
        shown="none")
    grace_s: float | None = env_field(
        "COTRAIN_SLURM_GRACE_S", None,
        "seconds from the stop signal to the job's step (the run saves a checkpoint) to `scancel` on cancel",
        shown="`COTRAIN_CANCEL_GRACE`")
    max_jobs: int = env_field("COTRAIN_SLURM_MAX_JOBS", 4, "sessions this worker keeps submitted at once")
    gpus: OnUnlessOff = env_field(
        "COTRAIN_SLURM_GPUS", True,
        "`0`: the cluster has no GPUs, so jobs ask for none (sessions train on CPU); else a session whose "
        "device is `auto` or `cuda` asks for `--gpus-per-node`", shown="`1`")

    @field_validator("max_jobs")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"COTRAIN_SLURM_MAX_JOBS={value} must be at least 1; set it to e.g. 4 or unset it.")
        return value

    @field_validator("time_limit")
    @classmethod
    def _slurm_time(cls, value: str | None) -> str | None:
        from cotrain.server.slurm.session_options import UNLIMITED, time_seconds

        if value is not None and value.strip().lower() not in UNLIMITED:
            try:
                time_seconds(value)
            except ValueError as exc:
                raise ValueError(f"COTRAIN_SLURM_TIME_LIMIT: {exc}") from None
        return value

    @field_validator("grace_s")
    @classmethod
    def _not_negative(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError(f"COTRAIN_SLURM_GRACE_S={value:g} must be 0 or more seconds; set it to e.g. 30 or "
                             "unset it.")
        return value

    def sbatch_options(self) -> list[str]:
        """The worker-wide `#SBATCH` options (a session's own narrowing comes after, in script.py)."""
        options = [f"--{name}={value}" for name, value in (
            ("partition", self.partition), ("account", self.account), ("qos", self.qos), ("time", self.time_limit),
        ) if value]
        return options + list(self.extra_sbatch)
