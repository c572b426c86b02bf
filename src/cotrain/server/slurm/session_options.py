"""A session's own Slurm options (issue 15): a maintainer may narrow where a session's job goes and
for how long (`slurmConfig: {partition, account, qos, timeLimit}` on create and PATCH), but only
within what the Slurm executor allows: COTRAIN_SLURM_PARTITIONS / _ACCOUNTS / _QOS_LIST (default: just
the configured COTRAIN_SLURM_PARTITION / _ACCOUNT / _QOS) and at most COTRAIN_SLURM_TIME_LIMIT.

Who may set the field is the permission table's (`Action.SLURM_OPTIONS`, session_policy.py). What it
may say is decided here, by `check`: at the API when the server itself runs the Slurm executor, and
always again by the worker at submission (`session_sbatch_args`), whose settings are the ones that count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cotrain.server.slurm.jobs import SlurmError
from cotrain.server.slurm.settings import SlurmSettings

# sbatch's --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds
TIME_PATTERN = r"^(\d{1,7}-\d{1,2}(:\d{1,2}){0,2}|\d{1,7}(:\d{1,2}){0,2})$"
UNLIMITED = ("unlimited", "infinite")
# (field of slurmConfig, sbatch option)
FIELDS = (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("timeLimit", "time"))
# (field, the list of allowed choices and its variable, the executor's own value's variable)
CHOICES = (("partition", "partitions", "COTRAIN_SLURM_PARTITIONS", "COTRAIN_SLURM_PARTITION"),
           ("account", "accounts", "COTRAIN_SLURM_ACCOUNTS", "COTRAIN_SLURM_ACCOUNT"),
           ("qos", "qos_list", "COTRAIN_SLURM_QOS_LIST", "COTRAIN_SLURM_QOS"))


class SlurmOptionsNotAllowed(SlurmError):
    """A session's slurmConfig asks for more than the executor allows; the message is one sentence
    naming the field, the value and what is allowed. A SlurmError, so a job it stops is a refused one
    (it fails without retries: a retry would ask for the same)."""


def time_seconds(value: str) -> int:
    """sbatch's --time as seconds; ValueError (one sentence) for anything else."""
    text = value.strip()
    if not re.fullmatch(TIME_PATTERN, text):
        raise ValueError(f"{value!r} is not a Slurm time limit; write minutes (`90`), hours:minutes:seconds "
                         "(`2:00:00`) or days-hours:minutes:seconds (`1-12:00:00`).")
    days, _, clock = text.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:  # minutes[:seconds]
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def max_time_seconds(settings: SlurmSettings) -> int | None:
    """The executor's time limit in seconds; None when it sets none (or an unlimited one)."""
    limit = settings.time_limit
    if not limit or limit.strip().lower() in UNLIMITED:
        return None
    return time_seconds(limit)


def allowed_values(settings: SlurmSettings) -> dict[str, list[str]]:
    """What a session may pick per field: the lists, else just the executor's own value (else nothing)."""
    def choices(listed: list[str], own: str | None) -> list[str]:
        return list(listed) if listed else [own] if own else []

    return {"partition": choices(settings.partitions, settings.partition),
            "account": choices(settings.accounts, settings.account),
            "qos": choices(settings.qos_list, settings.qos)}


def check(slurm_config: Mapping[str, Any], settings: SlurmSettings) -> None:
    """Raise SlurmOptionsNotAllowed unless every field of `slurm_config` is within what `settings` allow."""
    allowed = allowed_values(settings)
    for field, listed, variable, own in CHOICES:
        value = slurm_config.get(field)
        if value is None or value in allowed[field]:
            continue
        if not allowed[field]:
            raise SlurmOptionsNotAllowed(
                f"slurmConfig.{field} {value!r} cannot be chosen: this Slurm executor offers no {field} to choose "
                f"from ({variable} is not set); leave slurmConfig.{field} out, or ask the operator to set {variable}.")
        source = variable if getattr(settings, listed) else f"{own} only; {variable} allows more"
        raise SlurmOptionsNotAllowed(
            f"slurmConfig.{field} {value!r} is not allowed here; the allowed values are {', '.join(allowed[field])} "
            f"({source}): choose one of those.")
    wanted = slurm_config.get("timeLimit")
    if wanted is None:
        return
    try:
        seconds = time_seconds(wanted)
    except ValueError as exc:
        raise SlurmOptionsNotAllowed(f"slurmConfig.timeLimit: {exc}") from None
    if seconds == 0:  # sbatch reads --time=0 as no limit at all
        raise SlurmOptionsNotAllowed(f"slurmConfig.timeLimit {wanted!r} would mean no time limit; use e.g. 30 "
                                     "(minutes).")
    limit = max_time_seconds(settings)
    if limit is not None and seconds > limit:
        raise SlurmOptionsNotAllowed(
            f"slurmConfig.timeLimit {wanted!r} is longer than this Slurm executor's time limit "
            f"{settings.time_limit!r} (COTRAIN_SLURM_TIME_LIMIT); a session may only shorten it: use at most "
            f"{settings.time_limit}.")


def session_sbatch_args(request: Mapping[str, Any] | None, settings: SlurmSettings) -> list[str]:
    """The sbatch options of a session's own slurmConfig (its stored request), checked against this
    worker's settings: they come after the worker's own options, so they win. [] when it has none."""
    slurm_config = (request or {}).get("slurmConfig") or {}
    if not isinstance(slurm_config, Mapping):
        raise SlurmOptionsNotAllowed("The session's slurmConfig is not an object; edit the session and set it "
                                     "again (partition, account, qos, timeLimit).")
    check(slurm_config, settings)
    return [f"--{option}={slurm_config[field]}" for field, option in FIELDS if slurm_config.get(field)]
