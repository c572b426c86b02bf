"""Reward transactions built and signed with aptos-sdk.

APT: `0x1::aptos_account::batch_transfer(recipients: vector<address>, amounts: vector<u64>)`.
A fungible asset: `0x1::aptos_account::batch_transfer_fungible_assets(metadata: Object<Metadata>,
recipients, amounts)`; `asset` is then the asset's metadata object address.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from aptos_sdk.account import Account
from aptos_sdk.account_address import AccountAddress
from aptos_sdk.bcs import Deserializer, Serializer
from aptos_sdk.transactions import (
    EntryFunction,
    RawTransaction,
    SignedTransaction,
    TransactionArgument,
    TransactionPayload,
)

APT = "APT"
_TXN_PREFIX = hashlib.sha3_256(b"APTOS::Transaction").digest()
_USER_TRANSACTION = b"\x00"  # variant of Transaction::UserTransaction


def batch_payload(asset: str, recipients: Sequence[tuple[str, int]]) -> TransactionPayload:
    addresses = [AccountAddress.from_str_relaxed(addr) for addr, _ in recipients]
    amounts = [amount for _, amount in recipients]
    args = [
        TransactionArgument(addresses, Serializer.sequence_serializer(Serializer.struct)),
        TransactionArgument(amounts, Serializer.sequence_serializer(Serializer.u64)),
    ]
    if asset == APT:
        return TransactionPayload(EntryFunction.natural("0x1::aptos_account", "batch_transfer", [], args))
    metadata = TransactionArgument(AccountAddress.from_str_relaxed(asset), Serializer.struct)
    return TransactionPayload(
        EntryFunction.natural("0x1::aptos_account", "batch_transfer_fungible_assets", [], [metadata, *args])
    )


def decode_batch_args(payload: TransactionPayload) -> list[tuple[str, int]]:
    """The (recipient, amount) pairs of a batch payload, read back with the SDK's BCS deserializer."""
    entry = payload.value
    raw_recipients, raw_amounts = entry.args[-2], entry.args[-1]
    recipients = Deserializer(raw_recipients).sequence(AccountAddress.deserialize)
    amounts = Deserializer(raw_amounts).sequence(Deserializer.u64)
    return [(str(a), int(n)) for a, n in zip(recipients, amounts, strict=True)]


def build_raw(
    sender: AccountAddress,
    sequence_number: int,
    payload: TransactionPayload,
    chain_id: int,
    expires_at: int,
    max_gas_amount: int,
    gas_unit_price: int,
) -> RawTransaction:
    return RawTransaction(sender, sequence_number, payload, max_gas_amount, gas_unit_price, expires_at, chain_id)


def sign(account: Account, raw: RawTransaction) -> SignedTransaction:
    return SignedTransaction(raw, account.sign_transaction(raw))


def simulation_copy(account: Account, raw: RawTransaction) -> SignedTransaction:
    """The transaction with an all-zero signature, as the node's simulate endpoint requires."""
    return SignedTransaction(raw, account.sign_simulated_transaction(raw))


def transaction_hash(signed: SignedTransaction) -> str:
    """The hash the chain gives this transaction: sha3_256(sha3_256("APTOS::Transaction") || 0x00 ||
    BCS(SignedTransaction)). Known before submission, so a pending payout can be found after a crash."""
    return "0x" + hashlib.sha3_256(_TXN_PREFIX + _USER_TRANSACTION + signed.bytes()).hexdigest()


def from_hex(signed_hex: str) -> SignedTransaction:
    return SignedTransaction.deserialize(Deserializer(bytes.fromhex(signed_hex)))
