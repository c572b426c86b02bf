"""Payouts against the fake Aptos node (a real HTTP server on 127.0.0.1), with transactions built and
signed by aptos-sdk and checked by the node with aptos-sdk."""

from __future__ import annotations

import asyncio
import time

import pytest
from aptos_sdk.account import Account
from aptos_sdk.async_client import ClientConfig
from sqlalchemy import select, text

from cotrain.chain import aptos_tx
from cotrain.chain.orm import PayoutBatchRow, PayoutRow
from cotrain.chain.payouts import AptosPayouts, PayoutError, record_due_locally
from cotrain.chain.queries import reward_views
from cotrain.chain.settings import ChainSettings
from cotrain.chain.settlement import set_reward_pool, settle_session

from .conftest import AuditEvents
from .fake_aptos import GAS_USED, FakeAptosServer
from .test_ledger import Rec

POOL = 1_000_000


@pytest.fixture
def wallets():
    return [str(Account.generate().address()) for _ in range(3)]


@pytest.fixture
def node():
    with FakeAptosServer() as server:
        yield server


def settle(db_factory, ledger, wallets, session="s1"):
    with db_factory.begin() as db:
        set_reward_pool(db, ledger, session, POOL, "APT")
        settle_session(db, ledger, session, [Rec(f"p{i}", w, 100 * (i + 1), session_id=session)
                                             for i, w in enumerate(wallets)], require_binding=False)


def payer(db_factory, ledger, node, treasury, audit: AuditEvents | None = None, **kw):
    config = ClientConfig(http2=False, **kw)
    return AptosPayouts(db_factory, ledger, node.url, treasury, audit or AuditEvents(), chain_id=4, config=config,
                        wait_s=5, poll_s=0.05)


def expected(wallets):
    return {w: POOL * (i + 1) // 6 + (1 if i == 0 else 0) for i, w in enumerate(wallets)}


def test_local_backend_records_payouts_as_due(db_factory, ledger, wallets, audit):
    settle(db_factory, ledger, wallets)
    assert record_due_locally(db_factory, ledger, audit).recorded_due == 3
    assert record_due_locally(db_factory, ledger, audit).recorded_due == 0
    assert audit.actions() == [("payout.recorded_due", "s1", True)]
    with db_factory() as db:
        assert {r.status for r in db.scalars(select(PayoutRow))} == {"due"}
        assert ledger.verify(db).ok


def test_aptos_batch_transfer_pays_each_once(db_factory, ledger, wallets, node, audit):
    treasury = Account.generate()
    node.node.fund(str(treasury.address()), 10 * POOL)
    settle(db_factory, ledger, wallets)
    report = asyncio.run(payer(db_factory, ledger, node, treasury, audit).run())
    assert len(report.committed) == 1 and not report.pending, report.messages
    assert audit.actions() == [("payout.pending", "s1", True), ("payout.committed", "s1", True)]
    paid = {w: node.node.balance(w) for w in wallets}
    assert paid == expected(wallets) and sum(paid.values()) == POOL
    # The recorded transaction deserialises and verifies with aptos-sdk and holds the right transfers.
    with db_factory() as db:
        batch = db.scalars(select(PayoutBatchRow)).one()
        signed = aptos_tx.from_hex(batch.signed_txn)
        assert signed.verify() and signed.transaction.sender == treasury.address()
        assert signed.transaction.payload.value.function == "batch_transfer"
        assert dict(aptos_tx.decode_batch_args(signed.transaction.payload)) == expected(wallets)
        assert aptos_tx.transaction_hash(signed) == batch.tx_hash == report.committed[0]
        assert {(r.status, r.tx_hash) for r in db.scalars(select(PayoutRow))} == {("paid", batch.tx_hash)}
        assert ledger.verify(db).ok
    submits = node.node.submits
    asyncio.run(payer(db_factory, ledger, node, treasury).run())  # nothing left to pay
    assert node.node.submits == submits and {w: node.node.balance(w) for w in wallets} == paid
    # Setting a paid payout back to due by hand (it would be paid twice) is caught by ledger verify.
    with db_factory.begin() as db:
        db.execute(text(f"UPDATE chain_payouts SET status = 'due', batch_id = NULL WHERE address = '{wallets[0]}'"))
    with db_factory() as db:
        assert any("records it paid" in p for p in ledger.verify(db).problems)


def test_insufficient_balance_is_caught_by_simulation(db_factory, ledger, wallets, node):
    treasury = Account.generate()
    node.node.fund(str(treasury.address()), POOL // 2)
    settle(db_factory, ledger, wallets)
    with pytest.raises(PayoutError) as err:
        asyncio.run(payer(db_factory, ledger, node, treasury).run())
    assert "EINSUFFICIENT_BALANCE" in str(err.value) and str(treasury.address()) in str(err.value)
    with db_factory() as db:
        assert db.scalars(select(PayoutBatchRow)).all() == []
        assert {r.status for r in db.scalars(select(PayoutRow))} == {"due"}
    assert node.node.submits == 0


def test_mempool_full_stays_pending_then_pays_once(db_factory, ledger, wallets, node):
    treasury = Account.generate()
    node.node.fund(str(treasury.address()), 10 * POOL)
    settle(db_factory, ledger, wallets)
    node.node.mempool_full = True
    report = asyncio.run(payer(db_factory, ledger, node, treasury).run())
    assert report.pending and "mempool is full" in " ".join(report.messages)
    with db_factory() as db:  # what the API shows meanwhile: pending, with the transaction's hash
        views = reward_views(db, ChainSettings(network="testnet"), session_id="s1")
        assert {(v.payout_status, v.tx_hash) for v in views} == {("pending", report.pending[0])}
        assert views[0].explorer_url.endswith(f"/txn/{report.pending[0]}?network=testnet")
    node.node.mempool_full = False
    report = asyncio.run(payer(db_factory, ledger, node, treasury).run())
    assert len(report.committed) == 1
    assert {w: node.node.balance(w) for w in wallets} == expected(wallets)
    with db_factory() as db:
        assert [b.status for b in db.scalars(select(PayoutBatchRow))] == ["committed"]


def test_fee_refused_by_node_stays_pending_until_funded(db_factory, ledger, wallets, node):
    treasury = Account.generate()
    small_pool = 6_000
    # Enough for the transfers and the simulated gas, not for max_gas × gas price: the node answers
    # 400 vm_error INSUFFICIENT_BALANCE_FOR_TRANSACTION_FEE.
    node.node.fund(str(treasury.address()), small_pool + GAS_USED * 100)
    with db_factory.begin() as db:
        set_reward_pool(db, ledger, "s1", small_pool, "APT")
        settle_session(db, ledger, "s1", [Rec(f"p{i}", w, 100) for i, w in enumerate(wallets)],
                       require_binding=False)
    report = asyncio.run(payer(db_factory, ledger, node, treasury).run())
    assert report.pending and "INSUFFICIENT_BALANCE_FOR_TRANSACTION_FEE" in " ".join(report.messages)
    assert "Fund the treasury" in " ".join(report.messages)
    node.node.fund(str(treasury.address()), POOL)
    report = asyncio.run(payer(db_factory, ledger, node, treasury).run())
    assert len(report.committed) == 1
    assert [node.node.balance(w) for w in wallets] == [2_000, 2_000, 2_000]


def test_sequence_number_used_elsewhere_supersedes_and_repays(db_factory, ledger, wallets, node):
    treasury = Account.generate()
    node.node.fund(str(treasury.address()), 10 * POOL)
    settle(db_factory, ledger, wallets)
    node.node.mempool_full = True
    asyncio.run(payer(db_factory, ledger, node, treasury).run())  # pending at sequence number 0
    node.node.mempool_full = False
    node.node.use_sequence_number(str(treasury.address()))  # someone else's transaction takes 0
    report = asyncio.run(payer(db_factory, ledger, node, treasury).run())
    assert any("sequence number" in m for m in report.messages) and len(report.committed) == 1
    assert {w: node.node.balance(w) for w in wallets} == expected(wallets)
    with db_factory() as db:
        assert sorted(b.status for b in db.scalars(select(PayoutBatchRow))) == ["committed", "superseded"]


def test_expired_pending_transaction_is_resigned_with_same_sequence_number(db_factory, ledger, wallets, node):
    treasury = Account.generate()
    node.node.fund(str(treasury.address()), 10 * POOL)
    settle(db_factory, ledger, wallets)
    node.node.mempool_full = True
    asyncio.run(payer(db_factory, ledger, node, treasury, expiration_ttl=1).run())
    with db_factory() as db:
        first = db.scalars(select(PayoutBatchRow)).one().tx_hash
    time.sleep(1.1)
    node.node.mempool_full = False
    report = asyncio.run(payer(db_factory, ledger, node, treasury).run())
    assert len(report.committed) == 1 and report.committed[0] != first
    with db_factory() as db:
        batch = db.scalars(select(PayoutBatchRow)).one()
        assert batch.sequence_number == 0 and batch.status == "committed"
    assert {w: node.node.balance(w) for w in wallets} == expected(wallets)


def test_re_signed_copy_executing_counts_as_ours(db_factory, ledger, wallets, node):
    """Two runners by mistake: another copy of the batch (same payload and sequence number, later expiry, so
    another hash) executes. It is recognised as this batch: paid once, not re-paid as 'superseded'."""
    treasury = Account.generate()
    node.node.fund(str(treasury.address()), 10 * POOL)
    settle(db_factory, ledger, wallets)
    node.node.mempool_full = True
    asyncio.run(payer(db_factory, ledger, node, treasury).run())
    node.node.mempool_full = False
    with db_factory() as db:
        stored = aptos_tx.from_hex(db.scalars(select(PayoutBatchRow)).one().signed_txn).transaction
    copy = aptos_tx.build_raw(stored.sender, stored.sequence_number, stored.payload, stored.chain_id,
                              stored.expiration_timestamps_secs + 60, stored.max_gas_amount, stored.gas_unit_price)
    status, _ = node.node.submit(aptos_tx.sign(treasury, copy).bytes())
    assert status == 202
    report = asyncio.run(payer(db_factory, ledger, node, treasury).run())
    assert len(report.committed) == 1 and not report.messages, report.messages
    assert {w: node.node.balance(w) for w in wallets} == expected(wallets)
    with db_factory() as db:
        assert [b.status for b in db.scalars(select(PayoutBatchRow))] == ["committed"]


def test_fungible_asset_batch_deserialises_with_the_sdk(wallets):
    treasury = Account.generate()
    metadata = "0x" + "ab" * 32
    payload = aptos_tx.batch_payload(metadata, [(w, 10 * (i + 1)) for i, w in enumerate(wallets)])
    raw = aptos_tx.build_raw(treasury.address(), 7, payload, 2, 2**33, 2000, 100)
    signed = aptos_tx.from_hex(aptos_tx.sign(treasury, raw).bytes().hex())
    assert signed.verify()
    entry = signed.transaction.payload.value
    assert (str(entry.module), entry.function) == ("0x1::aptos_account", "batch_transfer_fungible_assets")
    assert "0x" + entry.args[0].hex() == metadata  # Object<Metadata> is its address
    assert aptos_tx.decode_batch_args(signed.transaction.payload) == [(w, 10 * (i + 1)) for i, w in enumerate(wallets)]
