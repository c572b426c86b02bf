"""A small Aptos fullnode stand-in for tests only: a real HTTP server on 127.0.0.1 that implements the few
REST endpoints the payout path uses, following the Aptos REST API (v1):

  GET  /v1                                  ledger info
  GET  /v1/accounts/{address}               sequence number and authentication key (404 account_not_found)
  GET  /v1/accounts/{address}/transactions  committed transactions of a sender (?start=seq&limit=n)
  POST /v1/transactions/simulate            BCS SignedTransaction with an invalid signature → [UserTransaction]
  POST /v1/transactions                     BCS SignedTransaction → 202 PendingTransaction, or
                                            400 sequence_number_too_old / vm_error, 507 mempool_is_full
  GET  /v1/transactions/by_hash/{hash}      pending or committed transaction (404 transaction_not_found)
  POST /v1/view                             JSON view call; only `0x1::coin::balance<AptosCoin>(owner)` → ["octas"]

Transactions are deserialised and their signatures verified with aptos-sdk; `0x1::aptos_account::
batch_transfer` is executed against in-memory balances (gas: GAS_USED units × gas price). Never used by
the product.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aptos_sdk.account_address import AccountAddress
from aptos_sdk.bcs import Deserializer
from aptos_sdk.transactions import SignedTransaction

GAS_USED = 12
_TXN_PREFIX = hashlib.sha3_256(b"APTOS::Transaction").digest()


@dataclass
class AccountState:
    sequence_number: int = 0
    authentication_key: bytes = b""
    balance: int = 0


@dataclass
class FakeAptosNode:
    chain_id: int = 4
    accounts: dict[bytes, AccountState] = field(default_factory=dict)
    committed: list[dict[str, Any]] = field(default_factory=list)
    mempool: dict[str, tuple[SignedTransaction, dict[str, Any]]] = field(default_factory=dict)
    mempool_full: bool = False
    hold_submit: bool = False  # answer a submit only after `release` is set (the tx is already accepted)
    drop_submit: bool = False  # lose submitted transactions (as if the request never reached the node)
    submit_seen: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    submits: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)

    # -- state helpers for tests
    def fund(self, address: str, amount: int, auth_key: bytes | None = None) -> None:
        addr = AccountAddress.from_str_relaxed(address)
        with self.lock:
            state = self.accounts.setdefault(addr.address, AccountState(authentication_key=addr.address))
            state.balance += amount
            if auth_key is not None:
                state.authentication_key = auth_key

    def balance(self, address: str) -> int:
        state = self.accounts.get(AccountAddress.from_str_relaxed(address).address)
        return state.balance if state else 0

    def use_sequence_number(self, address: str) -> None:
        """Another party uses the account's next sequence number (a foreign transaction)."""
        with self.lock:
            state = self.accounts[AccountAddress.from_str_relaxed(address).address]
            self.committed.append({"type": "user_transaction", "version": str(len(self.committed) + 1),
                                   "hash": "0x" + hashlib.sha3_256(str(time.time()).encode()).hexdigest(),
                                   "sender": str(AccountAddress.from_str_relaxed(address)),
                                   "sequence_number": str(state.sequence_number), "success": True,
                                   "vm_status": "Executed successfully", "gas_used": "1"})
            state.sequence_number += 1

    # -- REST semantics
    def now_us(self) -> int:
        return int(time.time() * 1_000_000)

    def ledger_info(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "epoch": "1", "ledger_version": str(len(self.committed)),
                "oldest_ledger_version": "0", "ledger_timestamp": str(self.now_us()), "node_role": "full_node",
                "oldest_block_height": "0", "block_height": str(len(self.committed)), "git_hash": "fake"}

    def _tx_json(self, signed: SignedTransaction, tx_hash: str, kind: str, **extra: Any) -> dict[str, Any]:
        raw = signed.transaction
        entry = raw.payload.value
        try:
            arguments: list[Any] = [[str(a) for a in Deserializer(entry.args[0]).sequence(AccountAddress.deserialize)],
                                    [str(n) for n in Deserializer(entry.args[1]).sequence(Deserializer.u64)]]
        except Exception:
            arguments = []
        return {"type": kind, "hash": tx_hash, "sender": str(raw.sender),
                "sequence_number": str(raw.sequence_number), "max_gas_amount": str(raw.max_gas_amount),
                "gas_unit_price": str(raw.gas_unit_price),
                "expiration_timestamp_secs": str(raw.expiration_timestamps_secs),
                "payload": {"type": "entry_function_payload",
                            "function": f"{entry.module}::{entry.function}", "type_arguments": [],
                            "arguments": arguments},
                **extra}

    def _execute(self, signed: SignedTransaction, state: AccountState, apply: bool) -> tuple[bool, str]:
        raw = signed.transaction
        entry = raw.payload.value
        fee = GAS_USED * raw.gas_unit_price
        if f"{entry.module}::{entry.function}" != "0x1::aptos_account::batch_transfer":
            return False, "FUNCTION_RESOLUTION_FAILURE"
        recipients = Deserializer(entry.args[0]).sequence(AccountAddress.deserialize)
        amounts = Deserializer(entry.args[1]).sequence(Deserializer.u64)
        if len(recipients) != len(amounts):
            return False, "Move abort in 0x1::aptos_account: EMISMATCHING_RECIPIENTS_AND_AMOUNTS_LENGTH(0x10005)"
        if state.balance < sum(amounts) + fee:
            if apply:
                state.balance -= min(fee, state.balance)
                state.sequence_number += 1
            return False, ("Move abort in 0x1::coin: EINSUFFICIENT_BALANCE(0x10006): Not enough coins to "
                           "complete transaction")
        if apply:
            state.balance -= sum(amounts) + fee
            for to, amount in zip(recipients, amounts, strict=True):
                self.accounts.setdefault(to.address, AccountState(authentication_key=to.address)).balance += amount
            state.sequence_number += 1
        return True, "Executed successfully"

    def simulate(self, body: bytes) -> tuple[int, Any]:
        signed = SignedTransaction.deserialize(Deserializer(body))
        if signed.verify():
            return 400, _error("Simulated transactions must not have a valid signature", "invalid_input")
        with self.lock:
            state = self.accounts.get(signed.transaction.sender.address)
            if state is None:
                return 200, [self._tx_json(signed, _hash(body), "user_transaction", success=False,
                                           vm_status="SENDING_ACCOUNT_DOES_NOT_EXIST", gas_used="0")]
            if signed.transaction.sequence_number < state.sequence_number:
                return 200, [self._tx_json(signed, _hash(body), "user_transaction", success=False,
                                           vm_status="SEQUENCE_NUMBER_TOO_OLD", gas_used="0")]
            ok, status = self._execute(signed, state, apply=False)
            return 200, [self._tx_json(signed, _hash(body), "user_transaction", success=ok, vm_status=status,
                                       gas_used=str(GAS_USED), version=str(len(self.committed)))]

    def submit(self, body: bytes) -> tuple[int, Any]:
        signed = SignedTransaction.deserialize(Deserializer(body))
        raw = signed.transaction
        tx_hash = _hash(body)
        with self.lock:
            self.submits += 1
            state = self.accounts.get(raw.sender.address)
            if not signed.verify():
                return 400, _vm_error("INVALID_SIGNATURE", 1)
            if state is None:
                return 400, _vm_error("SENDING_ACCOUNT_DOES_NOT_EXIST", 1010)
            if state.authentication_key not in _auth_keys(signed):
                return 400, _vm_error("INVALID_AUTH_KEY", 2)
            if raw.chain_id != self.chain_id:
                return 400, _vm_error("BAD_CHAIN_ID", 1012)
            if raw.sequence_number < state.sequence_number:
                return 400, _error(f"Transaction sequence number is too old: txn sequence number is "
                                   f"{raw.sequence_number}, current sequence number is {state.sequence_number}",
                                   "sequence_number_too_old")
            if raw.expiration_timestamps_secs * 1_000_000 <= self.now_us():
                return 400, _vm_error("TRANSACTION_EXPIRED", 1006)
            if state.balance < raw.max_gas_amount * raw.gas_unit_price:
                return 400, _vm_error("INSUFFICIENT_BALANCE_FOR_TRANSACTION_FEE", 5)
            if self.mempool_full:
                return 507, _error("Mempool is full. Mempool size: 2000000, Capacity: 2000000", "mempool_is_full")
            self.mempool[tx_hash] = (signed, self._tx_json(signed, tx_hash, "pending_transaction"))
            self._commit_ready()
            return 202, self._tx_json(signed, tx_hash, "pending_transaction")

    def _commit_ready(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            for tx_hash, (signed, _) in list(self.mempool.items()):
                state = self.accounts[signed.transaction.sender.address]
                if signed.transaction.sequence_number < state.sequence_number:
                    del self.mempool[tx_hash]  # its sequence number was used by another transaction
                elif signed.transaction.sequence_number == state.sequence_number:
                    del self.mempool[tx_hash]
                    ok, status = self._execute(signed, state, apply=True)
                    self.committed.append(self._tx_json(
                        signed, tx_hash, "user_transaction", version=str(len(self.committed) + 1), success=ok,
                        vm_status=status, gas_used=str(GAS_USED), timestamp=str(self.now_us())))
                    progressed = True

    def by_hash(self, tx_hash: str) -> tuple[int, Any]:
        with self.lock:
            for tx in self.committed:
                if tx["hash"] == tx_hash:
                    return 200, tx
            if tx_hash in self.mempool:
                return 200, self.mempool[tx_hash][1]
        return 404, _error(f"Transaction not found by Transaction hash({tx_hash})", "transaction_not_found")

    def account(self, address: str) -> tuple[int, Any]:
        addr = AccountAddress.from_str_relaxed(address)
        state = self.accounts.get(addr.address)
        if state is None:
            return 404, _error(f"Account not found by Address({address}) and Ledger version({len(self.committed)})",
                               "account_not_found")
        return 200, {"sequence_number": str(state.sequence_number),
                     "authentication_key": "0x" + state.authentication_key.hex()}

    def view(self, body: dict[str, Any]) -> tuple[int, Any]:
        """The view functions the server calls: the APT balance of an account (0 for an unknown one)."""
        if (body.get("function"), body.get("type_arguments")) != ("0x1::coin::balance", ["0x1::aptos_coin::AptosCoin"]):
            return 400, _error(f"unsupported view function {body.get('function')!r}", "invalid_input")
        with self.lock:
            return 200, [str(self.balance(body["arguments"][0]))]

    def account_transactions(self, address: str, start: int, limit: int) -> tuple[int, Any]:
        sender = str(AccountAddress.from_str_relaxed(address))
        mine = [t for t in self.committed if t["sender"] == sender and int(t["sequence_number"]) >= start]
        return 200, mine[:limit]


def _hash(signed_bytes: bytes) -> str:
    return "0x" + hashlib.sha3_256(_TXN_PREFIX + b"\x00" + signed_bytes).hexdigest()


def _auth_keys(signed: SignedTransaction) -> set[bytes]:
    from cotrain.chain.signin import derived_auth_keys

    return derived_auth_keys(signed.authenticator.authenticator.public_key)


def _error(message: str, code: str, vm_error_code: int | None = None) -> dict[str, Any]:
    return {"message": message, "error_code": code, "vm_error_code": vm_error_code}


def _vm_error(status: str, code: int) -> dict[str, Any]:
    return _error(f"Invalid transaction: Type: Validation Code: {status}", "vm_error", code)


class _Handler(BaseHTTPRequestHandler):
    node: FakeAptosNode
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Aptos-Chain-Id", str(self.node.chain_id))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path.rstrip("/")
        if path == "/v1":
            return self._send(200, self.node.ledger_info())
        if m := re.fullmatch(r"/v1/accounts/(0x[0-9a-fA-F]+)/transactions", path):
            return self._send(*self.node.account_transactions(m.group(1), int(query.get("start", 0)),
                                                              int(query.get("limit", 25))))
        if m := re.fullmatch(r"/v1/accounts/(0x[0-9a-fA-F]+)", path):
            return self._send(*self.node.account(m.group(1)))
        if m := re.fullmatch(r"/v1/transactions/by_hash/(0x[0-9a-fA-F]+)", path):
            return self._send(*self.node.by_hash(m.group(1)))
        self._send(404, _error(f"not found: {path}", "web_framework_error"))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/v1/view" and self.headers.get("Content-Type", "").startswith("application/json"):
            return self._send(*self.node.view(json.loads(body)))
        if self.headers.get("Content-Type") != "application/x.aptos.signed_transaction+bcs":
            return self._send(415, _error("expected a BCS signed transaction", "invalid_input"))
        if path == "/v1/transactions/simulate":
            return self._send(*self.node.simulate(body))
        if path == "/v1/transactions":
            if self.node.drop_submit:
                status, answer = 502, _error("lost", "internal_error")
            else:
                status, answer = self.node.submit(body)
            if self.node.hold_submit:
                self.node.submit_seen.set()
                self.node.release.wait(60)
            return self._send(status, answer)
        self._send(404, _error(f"not found: {path}", "web_framework_error"))


class FakeAptosServer:
    """Runs a FakeAptosNode on 127.0.0.1 in a background thread; `url` ends in /v1."""

    def __init__(self, node: FakeAptosNode | None = None):
        self.node = node or FakeAptosNode()
        handler = type("Handler", (_Handler,), {"node": self.node})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeAptosServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.node.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
