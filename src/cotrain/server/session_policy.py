"""What a session may ask of the platform, decided in one place for create, edit, start / retry and
the priority endpoint (`SessionPolicy.enforce`):

* Member quotas (server/settings.py `QuotaSettings`, one env setting each): sessions queued or
  running per owner, world size (nodes × gpusPerNode), the model size presets, and a token budget
  (steps × batch × sequence). Maintainers and admins (`Action.QUOTA_EXCEED`) may go past them.
* A priority above 0 needs `Action.PRIORITY_RAISE` (maintainers and admins).
* A session's own Slurm options (`slurmConfig`, issue 15) need `Action.SLURM_OPTIONS` (maintainers and
  admins) to set or change; when this server runs the Slurm executor itself, a value it does not allow
  is a 422 naming the allowed ones (slurm/session_options.py; the worker checks again at submission).
* A reward pool needs `Action.REWARD_POOL_UNLIMITED` (admins), or `Action.REWARD_POOL_SET`
  (maintainers) up to COTRAIN_REWARD_POOL_MAX. With the `aptos` payout backend, a pool is accepted only
  while the treasury's on-chain balance covers every open pool plus this one. A pool cannot be changed
  after creation (`SessionUpdate` has no rewardPool: a 422 names the field).

Refusals are 403 with a sentence naming the limit, the value asked for and who may exceed it: the
request is well formed and within the schema's hard limits (which stay the upper bound for everyone,
as 422), so what is missing is a permission, as for every other role rule. A treasury that cannot
cover a pool is 409 (it becomes acceptable once the treasury is funded); a node that cannot be asked is 503.

An edit is refused only for what it raises past a quota: the owner may still rename a session an
admin made bigger. Drafts do not count as active sessions; starting one does. The counts run under
a write lock (PostgreSQL advisory lock, SQLite write transaction), so two requests at once cannot
both take the last place.
"""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from cotrain.server.auth import Actor
from cotrain.server.errors import Conflict, Forbidden, ServiceError
from cotrain.server.orm import SessionStatus, TrainingSession
from cotrain.server.permissions import Action, allowed, require, who_may

if TYPE_CHECKING:
    from cotrain.config import CotrainConfig
    from cotrain.server.schemas import SessionCreate
    from cotrain.server.settings import QuotaSettings
    from cotrain.server.slurm.settings import SlurmSettings

# what an owner's active-sessions quota counts
COUNTED_STATES = (SessionStatus.QUEUED, SessionStatus.STARTING, SessionStatus.RUNNING, SessionStatus.CANCELLING)
_PG_LOCK_ID = 0x636F7170  # advisory lock serialising quota counts on PostgreSQL
MAX_FILES_MEASURED = 100_000  # a dataPath with more files is measured no further (its size is unknown)


class QuotaExceeded(Forbidden):
    """Past a member quota or a role rule (403); the sentence names the limit and who may exceed it."""


class TreasuryShort(Conflict):
    """The treasury's balance does not cover the open pools plus this one (409)."""


class TreasuryUnavailable(ServiceError):
    status_code = 503


class SlurmOptionsInvalid(ServiceError):
    """A slurmConfig outside what the Slurm executor allows (422); the sentence names the allowed values."""

    status_code = 422


# ---- what a session asks for ------------------------------------------------------------------

@dataclass(frozen=True)
class Ask:
    """A session's parameters in the quotas' units."""

    nodes: int
    gpus_per_node: int
    model_type: str
    model_size: str
    config: CotrainConfig

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @classmethod
    def of(cls, config: CotrainConfig) -> Ask:
        dist = config.distributed
        return cls(dist.nodes, dist.gpus_per_node, config.model.type, config.model.size, config)


@dataclass(frozen=True)
class Change:
    """One create, edit, start / retry or priority change, as the policy sees it."""

    owner_id: int | None  # whose active sessions count
    after: Ask | None = None  # the parameters after the change (create, edit)
    before: Ask | None = None  # ... and before it (edit); None: everything is new
    priority: int | None = None  # the priority asked for
    priority_before: int = 0
    reward_pool: tuple[int, str] | None = None  # (amount, asset), at creation only
    queues: bool = False  # the change puts the session in the queue (create with autoStart, start, retry)
    session_id: str | None = None  # left out of the active count (start / retry of this session)
    slurm_config: dict[str, Any] | None = None  # issue 15: the session's slurmConfig after the change (create, edit)
    slurm_before: dict[str, Any] | None = None  # ... and before it (edit)

    @classmethod
    def create(cls, actor: Actor | None, body: SessionCreate, config: CotrainConfig) -> Change:
        pool = (body.reward_pool.amount, body.reward_pool.asset) if body.reward_pool is not None else None
        return cls(owner_id=actor.token_id if actor else None, after=Ask.of(config), priority=body.priority,
                   reward_pool=pool, queues=body.auto_start, slurm_config=_slurm_config(body))

    @classmethod
    def update(cls, row: TrainingSession, body: SessionCreate, config: CotrainConfig) -> Change:
        return cls(owner_id=row.owner_id, after=Ask.of(config), before=stored_ask(row), priority=body.priority,
                   priority_before=row.priority, session_id=row.id, slurm_config=_slurm_config(body),
                   slurm_before=(row.request or {}).get("slurmConfig") or None)

    @classmethod
    def set_priority(cls, row: TrainingSession, priority: int) -> Change:
        return cls(owner_id=row.owner_id, priority=priority, priority_before=row.priority, session_id=row.id)

    @classmethod
    def start(cls, row: TrainingSession) -> Change:
        return cls(owner_id=row.owner_id, queues=True, session_id=row.id)


def _slurm_config(body: SessionCreate) -> dict[str, Any] | None:
    if body.slurm_config is None:
        return None
    return body.slurm_config.model_dump(mode="json", by_alias=True, exclude_none=True) or None


def stored_ask(row: TrainingSession) -> Ask | None:
    """The parameters a stored session asks for (its generated config); None when that no longer
    validates, so an edit is then checked as if everything were new."""
    from cotrain.config import validate_config

    try:
        return Ask.of(validate_config(tomllib.loads(row.config_toml)))
    except Exception:
        return None


# ---- the token budget -------------------------------------------------------------------------

@dataclass(frozen=True)
class Tokens:
    count: int | None  # None: cannot be told before the run (a dataPath not on this server)
    how: str  # how it was counted, for the sentence
    lower: str = "trainingConfig.maxSteps, batchSize or dataConfig.seqLength"  # what to lower


def token_estimate(config: CotrainConfig, home: Path, cap: int) -> Tokens:
    """Tokens the run trains on, at most: maxSteps × batchSize × seqLength, or without maxSteps
    epochs × the corpus's bytes (a byte-level tokenizer makes at most one token per byte). DiLoCo
    peers each train their own batch, so × nodes. A dataPath larger than `cap` bytes is not walked
    further (the estimate is then just above the cap)."""
    train, data, dist = config.train, config.data, config.distributed
    peers = dist.nodes if dist.strategy == "diloco" else 1
    times_peers = f" × {peers} DiLoCo peers" if peers > 1 else ""
    if train.max_steps:
        return Tokens(train.max_steps * train.batch_size * data.seq_length * peers,
                      f"maxSteps {train.max_steps} × batchSize {train.batch_size} × seqLength "
                      f"{data.seq_length}{times_peers}")
    epochs = train.epochs or 1
    if data.max_bytes:
        corpus, what = data.max_bytes, f"maxBytes {data.max_bytes}"
    elif data.data_path:
        from cotrain.data_roots import resolve

        measured = path_bytes(resolve(data.data_path, home), cap // max(1, epochs * peers) + 1)
        if measured is None:
            return Tokens(None, f"dataPath {data.data_path!r} is not on this server, so its size is unknown")
        corpus, what = measured, f"the {measured} bytes under dataPath"
    else:
        corpus, what = stdlib_bytes(), f"the {stdlib_bytes()} bytes of the stdlib corpus"
    return Tokens(epochs * corpus * peers, f"epochs {epochs} × {what}{times_peers}, at most a token per byte",
                  "trainingConfig.epochs or dataConfig.maxBytes, or set trainingConfig.maxSteps")


@functools.cache
def stdlib_bytes() -> int:
    from cotrain.core.corpus import stdlib_source

    return stdlib_source().total_bytes()


def path_bytes(path: Path, stop_above: int) -> int | None:
    """Bytes of the files at or under `path` (a count past `stop_above` ends the walk early), or None
    when it does not exist here or has too many files to measure."""
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    total = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            files += 1
            if files > MAX_FILES_MEASURED:
                return None
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
            if total > stop_above:
                return total
    return total


# ---- the policy -------------------------------------------------------------------------------

class SessionPolicy:
    def __init__(self, quotas: QuotaSettings, home: Path, slurm: SlurmSettings | None = None):
        self.q = quotas
        self.home = home
        self.slurm = slurm  # the Slurm executor's settings when this server runs it: slurmConfig is checked here too

    def enforce(self, db: Session, actor: Actor | None, change: Change) -> None:
        """Raise QuotaExceeded (403), TreasuryShort (409) or TreasuryUnavailable (503) unless `actor`
        may make `change`. Call it inside the transaction that stores the change: the active-sessions
        count and the open pools are read under a write lock held until that transaction ends.
        `actor` None is the server itself (the example session): the member rules apply to it."""
        self._priority(actor, change)
        self._reward_pool(actor, change)
        self._slurm_options(actor, change)
        if change.after is not None:
            self._sizes(actor, change.after, change.before)
        balance = self._treasury_balance(change)  # read before the lock: a slow node holds no lock
        if change.queues or balance is not None:
            hold_write_lock(db)
        if change.queues:
            self._active_sessions(db, actor, change)
        if balance is not None and change.reward_pool is not None:
            self._treasury_covers(db, change.reward_pool, *balance)

    # -- role rules
    def _priority(self, actor: Actor | None, change: Change) -> None:
        wanted = change.priority
        if wanted is None or wanted <= max(0, change.priority_before) or allowed(actor, Action.PRIORITY_RAISE):
            return
        raise QuotaExceeded(f"A priority of {wanted} is above 0; only {who_may(Action.PRIORITY_RAISE)} may raise "
                            "a session's queue priority above 0. Use 0 or less, or ask a maintainer.")

    def _reward_pool(self, actor: Actor | None, change: Change) -> None:
        if change.reward_pool is None or allowed(actor, Action.REWARD_POOL_UNLIMITED):
            return
        amount, asset = change.reward_pool
        cap = self.q.reward_pool_max
        if not allowed(actor, Action.REWARD_POOL_SET):
            raise QuotaExceeded(
                f"Only {who_may(Action.REWARD_POOL_UNLIMITED)} (any amount) and {_plural(Action.REWARD_POOL_SET)} "
                f"(up to COTRAIN_REWARD_POOL_MAX = {cap}) may open a reward pool; this one asks for {amount} {asset}. "
                "Create the session without rewardPool, or ask an admin to fund it.")
        if amount > cap:
            raise QuotaExceeded(
                f"A reward pool of {amount} {asset} is above COTRAIN_REWARD_POOL_MAX ({cap}, in the asset's smallest "
                f"unit) for maintainers; only {who_may(Action.REWARD_POOL_UNLIMITED)} may open a larger one.")

    def _slurm_options(self, actor: Actor | None, change: Change) -> None:
        """issue 15: setting or changing slurmConfig is for maintainers and admins; what it asks for must be
        within this server's Slurm executor settings when it has them (else the worker's check decides)."""
        if (change.slurm_config or None) == (change.slurm_before or None):
            return
        require(actor, Action.SLURM_OPTIONS, "set or change a session's Slurm options (slurmConfig: its partition, "
                                             "account, qos or timeLimit)")
        if self.slurm is not None and change.slurm_config:
            from cotrain.server.slurm.session_options import SlurmOptionsNotAllowed, check

            try:
                check(change.slurm_config, self.slurm)
            except SlurmOptionsNotAllowed as exc:
                raise SlurmOptionsInvalid(str(exc)) from None

    # -- member quotas
    def _sizes(self, actor: Actor | None, after: Ask, before: Ask | None) -> None:
        if allowed(actor, Action.QUOTA_EXCEED):
            return
        exceed = who_may(Action.QUOTA_EXCEED)
        q = self.q
        if after.world_size > q.world_size and (before is None or after.world_size > before.world_size):
            raise QuotaExceeded(
                f"distributedConfig asks for {after.nodes} nodes × {after.gpus_per_node} GPUs per node = "
                f"{after.world_size} processes; the world-size quota for members is {q.world_size} "
                f"(COTRAIN_QUOTA_WORLD_SIZE). Use fewer nodes or GPUs per node; only {exceed} may go past it.")
        if "*" not in q.model_sizes and after.model_size not in q.model_sizes and (
                before is None or (before.model_type, before.model_size) != (after.model_type, after.model_size)):
            raise QuotaExceeded(
                f"modelConfig.size {after.model_size!r} ({after.model_type}) is not among the model sizes members "
                f"may train ({', '.join(q.model_sizes)}; COTRAIN_QUOTA_MODEL_SIZES). Choose one of those; only "
                f"{exceed} may train other sizes.")
        tokens = token_estimate(after.config, self.home, q.tokens)
        if tokens.count is not None and tokens.count <= q.tokens:
            return
        if before is not None:
            earlier = token_estimate(before.config, self.home, q.tokens)
            if tokens.count is not None and earlier.count is not None and tokens.count <= earlier.count:
                return  # not raised by this edit
            if tokens.count is None and earlier.count is None:
                return
        if tokens.count is None:
            raise QuotaExceeded(
                f"The token budget for members is {q.tokens} tokens (COTRAIN_QUOTA_TOKENS), and {tokens.how}: set "
                f"trainingConfig.maxSteps or dataConfig.maxBytes so the run is bounded; only {exceed} may go "
                "without.")
        raise QuotaExceeded(
            f"This session would train on up to {tokens.count:,} tokens ({tokens.how}); the token budget for "
            f"members is {q.tokens:,} (COTRAIN_QUOTA_TOKENS). Lower {tokens.lower}; only {exceed} may go past it.")

    def _active_sessions(self, db: Session, actor: Actor | None, change: Change) -> None:
        if allowed(actor, Action.QUOTA_EXCEED):
            return
        owner = TrainingSession.owner_id == change.owner_id if change.owner_id is not None \
            else TrainingSession.owner_id.is_(None)
        query = select(func.count()).select_from(TrainingSession).where(
            owner, TrainingSession.status.in_(COUNTED_STATES))
        if change.session_id is not None:
            query = query.where(TrainingSession.id != change.session_id)
        active = db.scalar(query) or 0
        if active >= self.q.active_sessions:
            whose = "You already have" if actor is not None and actor.token_id == change.owner_id else "Its owner has"
            raise QuotaExceeded(
                f"{whose} {active} sessions queued or running; members may have at most "
                f"{self.q.active_sessions} (COTRAIN_QUOTA_ACTIVE_SESSIONS). Wait for one to finish, cancel one, or "
                f"keep this one as a draft (autoStart: false); only {who_may(Action.QUOTA_EXCEED)} may have more.")

    # -- the treasury (aptos payout backend)
    def _treasury_balance(self, change: Change) -> tuple[int, str] | None:
        """(balance, treasury address) when pools are paid on chain, else None (nothing to check)."""
        if change.reward_pool is None:
            return None
        from cotrain.chain.keys import KeyConfigError
        from cotrain.chain.settings import ChainConfigError, ChainSettings
        from cotrain.chain.treasury import TreasuryUnreadable, balance, treasury_address

        try:
            settings = ChainSettings.from_env()
            if settings.payout_backend != "aptos" or settings.node_url is None:
                return None
            owner = treasury_address()
            return balance(settings.node_url, owner, change.reward_pool[1]), owner
        except (ChainConfigError, KeyConfigError, TreasuryUnreadable) as exc:
            raise TreasuryUnavailable(f"Reward pools are paid on chain here, and the treasury's balance cannot be "
                                      f"read: {exc} Try again, or create the session without rewardPool.") from None

    def _treasury_covers(self, db: Session, pool: tuple[int, str], have: int, owner: str) -> None:
        amount, asset = pool
        promised = open_pools(db, asset)
        if promised + amount > have:
            raise TreasuryShort(
                f"The treasury {owner} holds {have} {asset} on chain, and open reward pools already promise "
                f"{promised}; this pool of {amount} would make {promised + amount}. Fund the treasury with at least "
                f"{promised + amount - have} more, or ask for a smaller pool.")


def open_pools(db: Session, asset: str) -> int:
    """What the treasury still owes in `asset`: the payouts of settled sessions not yet paid, plus the
    whole pool of every session not settled yet (read from the sessions' own rows, which are written in
    the same transaction as this check; a deleted unsettled session can no longer pay, so it does not count)."""
    from cotrain.chain.orm import PayoutRow, PayoutStatus, RewardRow

    unpaid = db.scalar(select(func.coalesce(func.sum(PayoutRow.amount), 0))
                       .where(PayoutRow.asset == asset, PayoutRow.status != PayoutStatus.PAID)) or 0
    pool = TrainingSession.request["rewardPool"]
    rows = db.execute(select(pool["amount"].as_string(), pool["asset"].as_string())
                      .where(pool["amount"].as_string().is_not(None),
                             TrainingSession.id.not_in(select(RewardRow.session_id))))
    unsettled = sum(int(amount) for amount, pool_asset in rows if (pool_asset or "APT") == asset)
    return int(unpaid) + unsettled


def hold_write_lock(db: Session) -> None:
    """Serialise this transaction with every other quota check until it ends: PostgreSQL's advisory
    transaction lock; on SQLite an empty write, which takes the database's write lock (busy_timeout waits)."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
    else:
        db.execute(text("UPDATE training_sessions SET priority = priority WHERE 1 = 0"))


def _plural(action: Action) -> str:
    """"maintainers" for REWARD_POOL_SET (the roles it adds over REWARD_POOL_UNLIMITED)."""
    from cotrain.server.permissions import PERMISSIONS, ROLE_ORDER

    extra = [f"{r.value}s" for r in ROLE_ORDER if r in PERMISSIONS[action] - PERMISSIONS[Action.REWARD_POOL_UNLIMITED]]
    return " and ".join(extra) or who_may(action)
