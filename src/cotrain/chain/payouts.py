"""Payout backends.

* `local` (default): the payouts due are grouped per session and recorded in the ledger as due; nothing is
  sent.
* `aptos`: one `batch_transfer` transaction per session (chunks of BATCH_SIZE recipients), built,
  simulated, signed and submitted with aptos-sdk's RestClient, then awaited; hash and status are recorded.

Why it never pays twice and never skips anyone: before a transaction is submitted, its batch is written
(status pending) with its sender sequence number and the exact signed bytes. An account can execute at
most one transaction per sequence number, so a batch keeps its number until the chain settles it:
* the account's sequence number moved past it → the transaction at that number is looked up: ours →
  committed (or failed: its payouts become due again); someone else's → superseded, payouts due again;
* not yet → the stored bytes are submitted again (same hash), or, once expired (it can then never
  execute), re-signed with the same sequence number.
A crash at any point (even between submit and record) leaves a pending batch that the next run settles.
Run one payout runner per treasury account at a time.

The runner is async (aptos-sdk's RestClient); its database steps are plain methods run with
`asyncio.to_thread`, so they never block the caller's event loop. Each payout event is written to the
server's audit log through the `PayoutAudit` the caller passes (the chain does not import the server).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import httpx
from aptos_sdk.account import Account
from aptos_sdk.account_address import AccountAddress
from aptos_sdk.async_client import ApiError, ClientConfig, RestClient
from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cotrain.chain import aptos_tx
from cotrain.chain.ledger import Ledger
from cotrain.chain.orm import BatchStatus, LedgerKind, PayoutBatchRow, PayoutRow, PayoutStatus

BATCH_SIZE = 100


class PayoutAudit(Protocol):
    """Writes one audit entry per payout event, after its transaction committed (`ok`: False for a failed or
    superseded transaction). It must never raise: auditing never stops a payout."""

    def __call__(self, action: str, session_id: str, ok: bool, detail: dict[str, Any]) -> None: ...


class PayoutError(Exception):
    """Payouts cannot go on; the message says why and what to do. Nothing was paid twice or lost."""


@dataclass
class PayoutReport:
    recorded_due: int = 0  # local backend: payouts recorded as due
    committed: list[str] = field(default_factory=list)  # tx hashes
    failed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _due_groups(db: Session, backend: str) -> dict[tuple[str, str], list[PayoutRow]]:
    query = (select(PayoutRow).where(PayoutRow.status == PayoutStatus.DUE)
             .order_by(PayoutRow.session_id, PayoutRow.address))
    groups: dict[tuple[str, str], list[PayoutRow]] = defaultdict(list)
    for row in db.scalars(query):
        if backend == "local" and row.batch_id is not None:
            continue  # already recorded as due
        groups[(row.session_id, row.asset)].append(row)
    return groups


def record_due_locally(factory: sessionmaker[Session], ledger: Ledger, audit: PayoutAudit) -> PayoutReport:
    """The local backend: one ledger entry per session listing the payouts due. Blocking: DB."""
    report = PayoutReport()
    recorded: list[tuple[str, dict[str, Any]]] = []
    with factory.begin() as db:
        for (session_id, asset), rows in _due_groups(db, "local").items():
            now = time.time()
            batch = PayoutBatchRow(session_id=session_id, backend="local", asset=asset, status=BatchStatus.DUE,
                                   created_at=now, updated_at=now)
            db.add(batch)
            db.flush()
            for row in rows:
                row.batch_id = batch.id
            ledger.append(db, LedgerKind.PAYOUT, session_id, {
                "session_id": session_id, "batch_id": batch.id, "backend": "local", "status": BatchStatus.DUE,
                "asset": asset, "recipients": [[r.address, r.amount] for r in rows],
            })
            report.recorded_due += len(rows)
            recorded.append((session_id, {"batch_id": batch.id, "backend": "local", "asset": asset,
                                          "recipients": len(rows), "amount": sum(r.amount for r in rows)}))
    for session_id, detail in recorded:
        audit("payout.recorded_due", session_id, True, detail)
    return report


def _error_code(exc: ApiError) -> str:
    """The Aptos API's `error_code` (sequence_number_too_old, mempool_is_full, vm_error, ...)."""
    found = re.search(r'"error_code"\s*:\s*"([a-z_]+)"', str(exc))
    return found.group(1) if found else ""


def _same_payload(tx: dict[str, Any], signed_hex: str) -> bool:
    """Whether a committed transaction (REST JSON) is our batch: same entry function, recipients and amounts.
    Covers a re-signed copy (new expiry, so a new hash) of the batch executing instead of the stored one."""
    payload = tx.get("payload") or {}
    try:
        entry = aptos_tx.from_hex(signed_hex).transaction.payload.value
        ours = aptos_tx.decode_batch_args(aptos_tx.from_hex(signed_hex).transaction.payload)
        function = f"{entry.module}::{entry.function}"
        args = payload.get("arguments") or []
        theirs = [(str(AccountAddress.from_str_relaxed(a)), int(n)) for a, n in zip(args[-2], args[-1], strict=True)]
    except Exception:
        return False
    return payload.get("function") == function and theirs == ours


class AptosPayouts:
    def __init__(
        self,
        factory: sessionmaker[Session],
        ledger: Ledger,
        node_url: str,
        treasury: Account,
        audit: PayoutAudit,
        chain_id: int | None = None,
        config: ClientConfig | None = None,
        wait_s: float = 30.0,
        poll_s: float = 0.5,
    ):
        self.factory = factory
        self.ledger = ledger
        self.node_url = node_url
        self.treasury = treasury
        self.audit = audit
        self.sender = str(treasury.address())
        self.expected_chain_id = chain_id
        self.config = config or ClientConfig()
        self.wait_s = wait_s
        self.poll_s = poll_s

    async def run(self) -> PayoutReport:
        report = PayoutReport()
        client = RestClient(self.node_url, self.config)
        try:
            self.chain_id = await self._chain_id(client)
            for batch_id in await asyncio.to_thread(self._pending_batch_ids):
                await self._settle(client, batch_id, report)
            if report.pending:
                report.messages.append("Earlier payouts are still pending on chain; new ones wait for the next run.")
                return report
            while True:
                group = await asyncio.to_thread(self._next_group)
                if group is None:
                    return report
                batch_id = await self._prepare(client, *group)
                await self._settle(client, batch_id, report)
                if report.pending or report.failed:  # a failed batch is not retried in the same run
                    return report
        except ApiError as exc:
            raise PayoutError(f"The Aptos node at {self.node_url} answered {exc.status_code}: {exc}. "
                              "Pending payouts are kept and retried on the next run.") from None
        except httpx.HTTPError as exc:
            raise PayoutError(f"Could not reach the Aptos node at {self.node_url} ({exc.__class__.__name__}); check "
                              "APTOS_NODE_URL and the network. Pending payouts are kept and retried on the next "
                              "run.") from None
        finally:
            await client.close()

    async def _chain_id(self, client: RestClient) -> int:
        node_chain = int((await client.info())["chain_id"])
        if self.expected_chain_id is not None and node_chain != self.expected_chain_id:
            raise PayoutError(f"The node at {self.node_url} is on chain {node_chain}, not {self.expected_chain_id}; "
                              "fix APTOS_NODE_URL or APTOS_NETWORK / APTOS_CHAIN_ID.")
        return node_chain

    def _pending_batch_ids(self) -> list[int]:
        with self.factory() as db:
            return list(db.scalars(
                select(PayoutBatchRow.id).where(PayoutBatchRow.backend == "aptos",
                                                PayoutBatchRow.status == BatchStatus.PENDING,
                                                PayoutBatchRow.sender == self.sender)
                .order_by(PayoutBatchRow.sequence_number)))

    def _next_group(self) -> tuple[str, str, list[tuple[int, str, int]]] | None:
        with self.factory() as db:
            for (session_id, asset), rows in _due_groups(db, "aptos").items():
                chunk = rows[:BATCH_SIZE]
                return session_id, asset, [(r.id, r.address, r.amount) for r in chunk]
        return None

    async def _ledger_now(self, client: RestClient) -> float:
        return int((await client.info())["ledger_timestamp"]) / 1e6

    async def _sign_new(self, client: RestClient, payload: Any, seq: int) -> tuple[aptos_tx.SignedTransaction, int]:
        """Simulate (all-zero signature), then sign for real with gas from the simulation."""
        expires = int(await self._ledger_now(client)) + self.config.expiration_ttl
        probe = aptos_tx.build_raw(self.treasury.address(), seq, payload, self.chain_id, expires,
                                   self.config.max_gas_amount, self.config.gas_unit_price)
        # aptos-sdk annotates a dict; the node answers a list with one result
        simulated = await client.simulate_bcs_transaction(aptos_tx.simulation_copy(self.treasury, probe))
        sim = cast(list[dict[str, Any]], simulated)[0]
        if not sim.get("success"):
            raise PayoutError(f"The payout transaction would fail on chain ({sim.get('vm_status')}); nothing was sent. "
                              f"Check the treasury account {self.sender} (its balance must cover the rewards and gas) "
                              "and run the payouts again.")
        max_gas = min(self.config.max_gas_amount, int(int(sim.get("gas_used", 0)) * 1.5) + 1000)
        raw = aptos_tx.build_raw(self.treasury.address(), seq, payload, self.chain_id, expires, max_gas,
                                 self.config.gas_unit_price)
        return aptos_tx.sign(self.treasury, raw), expires

    async def _prepare(self, client: RestClient, session_id: str, asset: str,
                       group: list[tuple[int, str, int]]) -> int:
        """Build, simulate and sign one batch, and record it as pending before anything is submitted."""
        on_chain = await client.account_sequence_number(self.treasury.address())
        highest = await asyncio.to_thread(self._highest_pending_sequence_number)
        seq = max(on_chain, (highest + 1) if highest is not None else 0)
        payload = aptos_tx.batch_payload(asset, [(addr, amount) for _, addr, amount in group])
        signed, expires = await self._sign_new(client, payload, seq)
        now = time.time()
        try:
            return await asyncio.to_thread(self._record_pending, session_id, asset, group, seq, signed, expires, now)
        except IntegrityError:
            raise PayoutError(f"Another payout runner recorded a transaction with sequence number {seq} at the same "
                              "time; run only one payout runner per treasury account, then run again.") from None

    def _highest_pending_sequence_number(self) -> int | None:
        with self.factory() as db:
            return db.scalar(select(PayoutBatchRow.sequence_number).where(
                PayoutBatchRow.sender == self.sender, PayoutBatchRow.status == BatchStatus.PENDING)
                .order_by(PayoutBatchRow.sequence_number.desc()).limit(1))

    def _record_pending(self, session_id: str, asset: str, group: list[tuple[int, str, int]], seq: int,
                        signed: aptos_tx.SignedTransaction, expires: int, now: float) -> int:
        with self.factory.begin() as db:
            batch = PayoutBatchRow(session_id=session_id, backend="aptos", asset=asset, status=BatchStatus.PENDING,
                                   sender=self.sender, sequence_number=seq, signed_txn=signed.bytes().hex(),
                                   tx_hash=aptos_tx.transaction_hash(signed), expires_at=expires,
                                   created_at=now, updated_at=now)
            db.add(batch)
            db.flush()
            ids = [pid for pid, _, _ in group]
            claim = (update(PayoutRow).where(PayoutRow.id.in_(ids), PayoutRow.status == PayoutStatus.DUE)
                     .values(status=PayoutStatus.PENDING, batch_id=batch.id))
            if cast(CursorResult[Any], db.execute(claim)).rowcount != len(ids):
                raise PayoutError("Another payout runner took some of these payouts; run only one runner per "
                                  "treasury account.")
            batch_id = batch.id
        self.audit("payout.pending", session_id, True, {
            "batch_id": batch_id, "backend": "aptos", "asset": asset, "recipients": len(group),
            "amount": sum(amount for _, _, amount in group), "sequence_number": seq,
            "tx_hash": aptos_tx.transaction_hash(signed), "sender": self.sender})
        return batch_id

    async def _settle(self, client: RestClient, batch_id: int, report: PayoutReport) -> None:
        """Bring one pending batch to its final state, or leave it pending (reported) to retry later."""
        seq, signed_hex, tx_hash, expires = await asyncio.to_thread(self._stored_batch, batch_id)
        for _attempt in range(3):
            on_chain = await client.account_sequence_number(self.treasury.address())
            if on_chain > seq:
                txs = await client.transactions_by_account(self.treasury.address(), limit=1, start=seq)
                tx = txs[0] if txs and int(txs[0].get("sequence_number", -1)) == seq else None
                if tx is None:  # never guess: an unknown outcome must not lead to paying again
                    report.pending.append(tx_hash)
                    report.messages.append(f"The node does not show the treasury's transaction {seq}; payout batch "
                                           f"{batch_id} stays pending. Check {tx_hash} on an archive node.")
                    return None
                if tx.get("hash") == tx_hash or _same_payload(tx, signed_hex):
                    return await asyncio.to_thread(self._final, batch_id, bool(tx.get("success")),
                                                   str(tx.get("vm_status")), report, str(tx.get("hash")))
                return await asyncio.to_thread(self._superseded, batch_id, tx.get("hash"), report)
            if not await self._in_mempool(client, tx_hash):
                if expires is not None and await self._ledger_now(client) >= expires:
                    signed_hex, tx_hash, expires = await self._resign(client, batch_id, signed_hex, seq)
                outcome = await self._submit(client, batch_id, signed_hex, report)
                if outcome == "retry":
                    continue
                if outcome == "pending":
                    return
            if await self._await_commit(client, tx_hash):
                continue  # committed (or consumed): the next pass reads the result by sequence number
            report.pending.append(tx_hash)
            report.messages.append(f"Payout transaction {tx_hash} is not committed yet; run the payouts again later.")
            return
        report.pending.append(tx_hash)

    def _stored_batch(self, batch_id: int) -> tuple[int, str, str, int | None]:
        """(sequence number, signed transaction, its hash, expiry) of a pending batch."""
        with self.factory() as db:
            batch = db.get(PayoutBatchRow, batch_id)
            assert batch is not None and batch.sequence_number is not None and batch.signed_txn and batch.tx_hash
            return batch.sequence_number, batch.signed_txn, batch.tx_hash, batch.expires_at

    async def _in_mempool(self, client: RestClient, tx_hash: str) -> bool:
        try:
            return (await client.transaction_by_hash(tx_hash)).get("type") == "pending_transaction"
        except ApiError as exc:
            if exc.status_code == 404:
                return False
            raise

    async def _resign(self, client: RestClient, batch_id: int, signed_hex: str, seq: int) -> tuple[str, str, int]:
        """The stored transaction expired unexecuted: sign the same payload with the same sequence number."""
        old = aptos_tx.from_hex(signed_hex)
        signed, expires = await self._sign_new(client, old.transaction.payload, seq)
        new_hex, new_hash = signed.bytes().hex(), aptos_tx.transaction_hash(signed)
        await asyncio.to_thread(self._store_resigned, batch_id, new_hex, new_hash, expires)
        return new_hex, new_hash, expires

    def _store_resigned(self, batch_id: int, signed_hex: str, tx_hash: str, expires: int) -> None:
        with self.factory.begin() as db:
            batch = db.get(PayoutBatchRow, batch_id)
            assert batch is not None
            batch.signed_txn, batch.tx_hash, batch.expires_at = signed_hex, tx_hash, expires
            batch.updated_at = time.time()

    async def _submit(self, client: RestClient, batch_id: int, signed_hex: str, report: PayoutReport) -> str:
        """Returns "sent", "retry" (re-check the chain) or "pending" (leave for the next run)."""
        try:
            await client.submit_bcs_transaction(aptos_tx.from_hex(signed_hex))
            return "sent"
        except ApiError as exc:
            code = _error_code(exc)
            if code == "sequence_number_too_old":
                return "retry"
            if code == "mempool_is_full":
                message = ("The Aptos node's mempool is full; the payout stays pending and is retried on the next "
                           "run.")
            elif code == "vm_error":
                message = (f"The Aptos node refused the payout transaction ({exc}); it stays pending. Fund the "
                           f"treasury account {self.sender} if its balance is low, then run the payouts again.")
            else:
                raise
            report.pending.append(await asyncio.to_thread(self._note_refusal, batch_id, str(exc)))
            report.messages.append(message)
            return "pending"

    def _note_refusal(self, batch_id: int, vm_status: str) -> str:
        """The node refused the batch's transaction: note why; it stays pending. Returns its hash."""
        with self.factory.begin() as db:
            batch = db.get(PayoutBatchRow, batch_id)
            assert batch is not None
            batch.vm_status, batch.updated_at = vm_status, time.time()
            return str(batch.tx_hash)

    async def _await_commit(self, client: RestClient, tx_hash: str) -> bool:
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline:
            if not await client.transaction_pending(tx_hash):
                return True
            await asyncio.sleep(self.poll_s)
        return False

    def _final(self, batch_id: int, success: bool, vm_status: str, report: PayoutReport, chain_hash: str) -> None:
        """The batch's transaction executed: its payouts are paid, or (it failed) due again. Blocking: DB."""
        with self.factory.begin() as db:
            batch = db.get(PayoutBatchRow, batch_id)
            assert batch is not None
            batch.tx_hash = chain_hash  # a re-signed copy of the batch may be the one that executed
            rows = list(db.scalars(select(PayoutRow).where(PayoutRow.batch_id == batch_id)
                                   .order_by(PayoutRow.address)))
            batch.status = BatchStatus.COMMITTED if success else BatchStatus.FAILED
            batch.vm_status, batch.updated_at = vm_status, time.time()
            for row in rows:
                if success:
                    row.status, row.tx_hash = PayoutStatus.PAID, batch.tx_hash
                else:  # its transaction executed and failed: pay again later
                    row.status, row.batch_id = PayoutStatus.DUE, None
            self.ledger.append(db, LedgerKind.PAYOUT, batch.session_id, {
                "session_id": batch.session_id, "batch_id": batch.id, "backend": "aptos", "status": batch.status,
                "asset": batch.asset, "sender": batch.sender, "sequence_number": batch.sequence_number,
                "tx_hash": batch.tx_hash, "vm_status": vm_status, "recipients": [[r.address, r.amount] for r in rows],
            })
            (report.committed if success else report.failed).append(str(batch.tx_hash))
            if not success:
                report.messages.append(f"Payout transaction {batch.tx_hash} failed on chain ({vm_status}); its payouts "
                                       "are due again.")
            event = (batch.session_id, {"batch_id": batch.id, "backend": "aptos", "asset": batch.asset,
                                        "recipients": len(rows), "amount": sum(r.amount for r in rows),
                                        "tx_hash": batch.tx_hash, "vm_status": vm_status[:200]})
        self.audit("payout.committed" if success else "payout.failed", event[0], success, event[1])

    def _superseded(self, batch_id: int, other_hash: str | None, report: PayoutReport) -> None:
        """Another transaction used the batch's sequence number: its payouts are due again. Blocking: DB."""
        with self.factory.begin() as db:
            batch = db.get(PayoutBatchRow, batch_id)
            assert batch is not None
            batch.status, batch.updated_at = BatchStatus.SUPERSEDED, time.time()
            batch.vm_status = f"sequence number {batch.sequence_number} was used by {other_hash}"
            for row in db.scalars(select(PayoutRow).where(PayoutRow.batch_id == batch_id)):
                row.status, row.batch_id = PayoutStatus.DUE, None
            session_id, seq = batch.session_id, batch.sequence_number
        self.audit("payout.superseded", session_id, False,
                   {"batch_id": batch_id, "sequence_number": seq, "other_tx_hash": other_hash})
        report.messages.append(f"Another transaction ({other_hash}) used the treasury's sequence number; the payouts "
                               "of that batch are due again. Do not use the treasury account elsewhere.")
