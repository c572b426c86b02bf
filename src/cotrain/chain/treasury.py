"""The treasury's on-chain balance, read through the Aptos REST API (`POST /v1/view`), so a reward pool
is accepted only while the treasury can pay every open pool (the `aptos` payout backend only; the local
backend records payouts as due and holds no balance).

APT: the view function `0x1::coin::balance<0x1::aptos_coin::AptosCoin>(owner)`, which counts the
coin store and its paired fungible-asset store. A fungible asset (`asset` = its metadata object
address): `0x1::primary_fungible_store::balance<0x1::fungible_asset::Metadata>(owner, metadata)`.
"""

from __future__ import annotations

import httpx
from aptos_sdk.account_address import AccountAddress

from cotrain.chain.aptos_tx import APT

TIMEOUT_S = 5.0  # a create request waits at most this long for the node


class TreasuryUnreadable(Exception):
    """The balance could not be read; the message says from where and what to check."""


def treasury_address() -> str:
    """COTRAIN_TREASURY_ADDRESS when set (a server that checks pools but does not hold the key),
    else the address of the treasury key (COTRAIN_TREASURY_KEY / COTRAIN_TREASURY_KEY_FILE)."""
    from cotrain.chain.keys import key_settings, load_treasury_account

    configured = (key_settings().treasury_address or "").strip()
    if configured:
        try:
            return str(AccountAddress.from_str_relaxed(configured))
        except Exception:
            raise TreasuryUnreadable(f"COTRAIN_TREASURY_ADDRESS={configured!r} is not an Aptos address; set it to "
                                     "the treasury account's 0x... address or unset it.") from None
    return str(load_treasury_account().address())


def view_request(owner: str, asset: str) -> dict[str, object]:
    """The JSON body of the view call that returns `owner`'s balance of `asset`."""
    if asset == APT:
        return {"function": "0x1::coin::balance", "type_arguments": ["0x1::aptos_coin::AptosCoin"],
                "arguments": [owner]}
    return {"function": "0x1::primary_fungible_store::balance", "type_arguments": ["0x1::fungible_asset::Metadata"],
            "arguments": [owner, str(AccountAddress.from_str_relaxed(asset))]}


def balance(node_url: str, owner: str, asset: str = APT, timeout_s: float = TIMEOUT_S) -> int:
    """`owner`'s balance of `asset` in its smallest unit, as the node at `node_url` (ending in /v1) sees it now."""
    try:
        answer = httpx.post(f"{node_url.rstrip('/')}/view", json=view_request(owner, asset), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise TreasuryUnreadable(f"Could not reach the Aptos node at {node_url} to read the treasury's balance "
                                 f"({exc.__class__.__name__}); check APTOS_NODE_URL and the network.") from None
    if answer.status_code != 200:
        raise TreasuryUnreadable(f"The Aptos node at {node_url} answered {answer.status_code} when asked for the "
                                 f"treasury's {asset} balance: {answer.text[:300]}")
    try:
        return int(answer.json()[0])
    except (ValueError, TypeError, IndexError, KeyError):
        raise TreasuryUnreadable(f"The Aptos node at {node_url} answered the balance view with {answer.text[:300]!r}, "
                                 "not [\"<amount>\"].") from None
