"""Wallet sign-in: one-time nonces and verification of what the wallet signed.

Two formats are accepted, both signed with the account's Ed25519 key:

* AIP-62 `signMessage`: the wallet returns `fullMessage`, the exact text it signed: the line `APTOS`, then
  `address:`, `application:`, `chainId:`, `message:` and `nonce:` lines in an order that differs between
  wallets. We check the text we receive instead of rebuilding it.
* AIP-116 "Sign in with Aptos" (`aptos:signIn`): a plain-text message starting
  `<domain> wants you to sign in with your Aptos account:`; the wallet signs
  `sha3_256(b"SIGN_IN_WITH_APTOS::") || message`.

What was signed must match what this server issued, field by field: every line is a known field and
none appears twice (so nothing can be smuggled inside another field's value), the `message:` (AIP-116:
the statement) is the issued text exactly, the nonce is the issued one, the chain id is present and the
configured chain, and the `application:` (AIP-116: the URI's origin) is COTRAIN_PUBLIC_ORIGIN exactly,
or, with none configured, a loopback origin. Nothing is taken from the request's Host header.

The public key must belong to the address: its authentication key is sha3-256(public key || scheme), or,
when an Aptos node is configured, the account's on-chain authentication key (so rotated keys work).
Signature checks, key parsing and address derivation use aptos-sdk.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import urlsplit

from aptos_sdk import asymmetric_crypto_wrapper, ed25519
from aptos_sdk.account_address import AccountAddress

from cotrain.chain.settings import ChainSettings

AIP62_PREFIX = "APTOS\n"
SIWA_HEADER_SUFFIX = " wants you to sign in with your Aptos account:"
SIWA_DOMAIN_SEPARATOR = b"SIGN_IN_WITH_APTOS::"
SIWA_CHAIN_NAMES = {"mainnet": 1, "testnet": 2, "localnet": 4, "local": 4}

# Looks up an account's on-chain authentication key (32 bytes), or None when the account does not exist.
AuthKeyLookup = Callable[[AccountAddress], Awaitable[bytes | None]]


class SignInError(Exception):
    """Sign-in refused. `reason` is a short code (replay, wrong_origin, wrong_key, expired_nonce, ...);
    the message is a sentence for the user that says why and what to do. `status` is the HTTP status."""

    def __init__(self, reason: str, message: str, status: int = 401):
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Challenge:
    nonce: str
    address: str
    application: str
    chain_id: int | None
    message: str
    expires_at: datetime


class NonceStore(Protocol):
    """Where issued nonces live until used. `consume` must be atomic: of two concurrent calls for the same
    nonce, exactly one gets "ok"."""

    def save(self, challenge: Challenge) -> None: ...

    def get(self, nonce: str) -> Challenge | None: ...

    def consume(self, nonce: str, now: datetime) -> str:
        """Mark the nonce used; returns "ok", "unknown", "used" or "expired"."""
        ...


class MemoryNonceStore:
    """A NonceStore for one process (the CLI and tests); the server uses the DB-backed one (chain/nonces.py)."""

    def __init__(self) -> None:
        self._issued: dict[str, Challenge] = {}
        self._used: set[str] = set()

    def save(self, challenge: Challenge) -> None:
        self._issued[challenge.nonce] = challenge

    def get(self, nonce: str) -> Challenge | None:
        return self._issued.get(nonce)

    def consume(self, nonce: str, now: datetime) -> str:
        challenge = self._issued.get(nonce)
        if challenge is None:
            return "unknown"
        if nonce in self._used:
            return "used"
        if now >= challenge.expires_at:
            return "expired"
        self._used.add(nonce)
        return "ok"


@dataclass(frozen=True)
class SignInRequest:
    address: str
    public_key: str
    full_message: str
    signature: str


@dataclass(frozen=True)
class VerifiedSignIn:
    address: str
    public_key: str
    format: str  # "aip62" or "aip116"


def normalize_address(value: str) -> str:
    """The AIP-40 form of an account address (0x + 64 hex digits; 0x0-0xf for special addresses)."""
    try:
        return str(AccountAddress.from_str_relaxed(value.strip()))
    except Exception:
        raise SignInError(
            "bad_address",
            f"{value!r} is not an Aptos account address; send the 0x-prefixed hex address of your wallet.",
            400,
        ) from None


def sign_in_message(address: str) -> str:
    """The text a wallet signs to sign in as `address` (AIP-40 form)."""
    return f"Sign in to CoTrain as {address}. This does not send a transaction or cost gas."


def issue_challenge(
    store: NonceStore,
    address: str,
    application: str,
    chain_id: int | None,
    now: datetime | None = None,
    ttl_s: int = 300,
    message: str | None = None,
) -> Challenge:
    """A fresh single-use nonce for `address`; it expires after `ttl_s` seconds (5 minutes). `message` is what
    the wallet is to sign with it (default: the sign-in text); a nonce is good only for its own message."""
    now = now or datetime.now(UTC)
    addr = normalize_address(address)
    challenge = Challenge(
        nonce=secrets.token_hex(16),  # alphanumeric, as AIP-116 requires of a nonce
        address=addr,
        application=application,
        chain_id=chain_id,
        message=message if message is not None else sign_in_message(addr),
        expires_at=now + timedelta(seconds=ttl_s),
    )
    store.save(challenge)
    return challenge


@dataclass(frozen=True)
class _Fields:
    format: str
    address: str
    application: str
    chain: str | None
    nonce: str
    message: str | None  # AIP-62 `message:`, AIP-116 statement: must be the issued text exactly
    signed_bytes: bytes
    window: tuple[datetime | None, datetime | None] = (None, None)  # AIP-116 Not Before / Expiration Time


AIP62_FIELDS = ("address", "application", "chainId", "message", "nonce")
SIWA_FIELDS = ("URI", "Version", "Chain ID", "Nonce", "Issued At", "Expiration Time", "Not Before", "Request ID")


def _shown(line: str) -> str:
    return repr(line if len(line) <= 60 else line[:57] + "...")


def _single(values: dict[str, list[str]], key: str, shown: str) -> str | None:
    found = values.get(key, [])
    if len(found) > 1:
        raise SignInError(
            "bad_message", f"The signed message has {len(found)} '{shown}' lines; it must have one.", 401
        )
    return found[0] if found else None


def _field_lines(lines: list[str], known: tuple[str, ...], what: str) -> dict[str, list[str]]:
    """Every line must be `Key: value` with a known key: nothing can hide in another field's value,
    and a duplicated key is caught by `_single`."""
    values: dict[str, list[str]] = {}
    for line in lines:
        key, sep, value = line.partition(": ")
        if not sep or key not in known:
            raise SignInError(
                "bad_message",
                f"The signed message has a line {_shown(line)} that is not one of the {what} fields "
                f"({', '.join(k + ':' for k in known)}); sign exactly the message this server issued.",
            )
        values.setdefault(key, []).append(value)
    return values


def _without_message_block(lines: list[str], expected: str) -> list[str] | None:
    """`lines` less the one run of whole lines that is `message: <expected>` (a message of several lines), or
    None when there is no such run."""
    block = f"message: {expected}".split("\n")
    at = [i for i in range(len(lines) - len(block) + 1) if lines[i : i + len(block)] == block]
    return lines[: at[0]] + lines[at[0] + len(block) :] if at else None


def _parse_aip62(full_message: str, expected: str | None = None) -> _Fields:
    lines = full_message[len(AIP62_PREFIX) :].split("\n")
    message: str | None = None
    if expected is not None and "\n" in expected:
        # A message of several lines is found as the exact run of lines expected; every other line must still be
        # a known field, and another `message:` line is a second message (refused as a duplicate below).
        rest = _without_message_block(lines, expected)
        if rest is None:
            raise SignInError("wrong_message", "The signed message is not the text this server asked the wallet to "
                              "sign; sign exactly that text, with nothing added.")
        lines, message = rest, expected
    values = _field_lines(lines, AIP62_FIELDS, "signMessage")
    if message is not None:
        values.setdefault("message", []).append(message)
    nonce = _single(values, "nonce", "nonce:")
    if nonce is None:
        raise SignInError("bad_message", "The signed message has no 'nonce:' line; ask for a nonce and sign it.")
    address = _single(values, "address", "address:")
    application = _single(values, "application", "application:")
    if address is None or application is None:
        raise SignInError(
            "bad_message",
            "The signed message must include the address and the application: sign with "
            "signMessage({address: true, application: true, chainId: true, ...}).",
        )
    return _Fields("aip62", address, application, _single(values, "chainId", "chainId:"), nonce,
                   _single(values, "message", "message:"), full_message.encode())


def _parse_siwa(message: str) -> _Fields:
    lines = message.split("\n")
    if len(lines) < 4 or not lines[0].endswith(SIWA_HEADER_SUFFIX) or lines[2] != "":
        raise SignInError("bad_message", "The sign-in message is not in the Sign in with Aptos format.", 400)
    domain = lines[0][: -len(SIWA_HEADER_SUFFIX)]
    statement: str | None = None
    rest = lines[3:]
    if rest and not rest[0].startswith("URI: "):  # the optional statement, then an empty line
        if len(rest) < 2 or rest[1] != "":
            raise SignInError("bad_message", "The sign-in message's statement must be one line followed by an "
                              "empty line; sign exactly the message this server issued.")
        statement, rest = rest[0], rest[2:]
    if "Resources:" in rest:  # the last field: a list of "- <URI>" lines
        at = rest.index("Resources:")
        if rest.count("Resources:") > 1 or not all(line.startswith("- ") for line in rest[at + 1 :]):
            raise SignInError("bad_message", "The sign-in message's 'Resources:' must be its last field, "
                              "followed only by '- <URI>' lines.")
        rest = rest[:at]
    values = _field_lines(rest, SIWA_FIELDS, "Sign in with Aptos")
    nonce = _single(values, "Nonce", "Nonce:")
    uri = _single(values, "URI", "URI:")
    if nonce is None or uri is None:
        raise SignInError("bad_message", "The sign-in message needs a 'URI:' and a 'Nonce:' line.")
    version = _single(values, "Version", "Version:")
    if version is not None and version != "1":
        raise SignInError("bad_message", f"The sign-in message's Version is {version!r}; only version 1 is known.")
    _single(values, "Issued At", "Issued At:")
    _single(values, "Request ID", "Request ID:")
    parts = urlsplit(uri)
    application = f"{parts.scheme}://{parts.netloc}"
    if parts.netloc != domain:
        raise SignInError(
            "wrong_origin", f"The sign-in message's domain {domain!r} does not match its URI {uri!r}."
        )
    signed = hashlib.sha3_256(SIWA_DOMAIN_SEPARATOR).digest() + message.encode()
    window = (_time(_single(values, "Not Before", "Not Before:")),
              _time(_single(values, "Expiration Time", "Expiration Time:")))
    return _Fields("aip116", lines[1], application, _single(values, "Chain ID", "Chain ID:"), nonce, statement,
                   signed, window)


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SignInError("bad_message", f"{value!r} in the sign-in message is not an ISO 8601 time.", 400) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _chain_matches(chain: str, chain_id: int) -> bool:
    value = chain.removeprefix("aptos:")
    if value.isdigit():
        return int(value) == chain_id
    return SIWA_CHAIN_NAMES.get(value) == chain_id


def _parse_public_key(value: str) -> ed25519.PublicKey:
    try:
        raw = bytes.fromhex(value.strip().removeprefix("0x"))
        if len(raw) == 33 and raw[0] == 0:  # some wallets prefix the Ed25519 scheme byte
            raw = raw[1:]
        if len(raw) != ed25519.PublicKey.LENGTH:
            raise ValueError
        return ed25519.PublicKey.from_str(raw.hex())
    except Exception:
        raise SignInError(
            "bad_public_key", "publicKey must be the wallet's 32-byte Ed25519 public key in hex.", 400
        ) from None


def _parse_signature(value: str) -> ed25519.Signature:
    try:
        raw = bytes.fromhex(value.strip().removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != ed25519.Signature.LENGTH:
        raise SignInError("bad_signature", "signature must be the wallet's 64-byte Ed25519 signature in hex.", 400)
    return ed25519.Signature(raw)


def derived_auth_keys(public_key: ed25519.PublicKey) -> set[bytes]:
    """Authentication keys this Ed25519 key gives an account: the legacy Ed25519 scheme
    sha3-256(key || 0x00) and the single-key scheme sha3-256(0x00 || len || key || 0x02)."""
    return {
        AccountAddress.from_key(public_key).address,
        AccountAddress.from_key(asymmetric_crypto_wrapper.PublicKey(public_key)).address,
    }


async def verify_sign_in(
    request: SignInRequest,
    store: NonceStore,
    origin: str | None,
    chain_id: int | None,
    now: datetime | None = None,
    auth_key_lookup: AuthKeyLookup | None = None,
) -> VerifiedSignIn:
    """Check a wallet's sign-in response against what this server issued; raises SignInError saying
    why it is refused. `origin` is COTRAIN_PUBLIC_ORIGIN (None: loopback origins only) and
    `chain_id` the configured chain; neither ever comes from the request. The nonce is spent last,
    only when everything else holds."""
    claimed = normalize_address(request.address)
    return await verify_wallet_message(request, sign_in_message(claimed), store, origin, chain_id, now,
                                       auth_key_lookup)


async def verify_wallet_message(
    request: SignInRequest,
    expected_message: str,
    store: NonceStore,
    origin: str | None,
    chain_id: int | None,
    now: datetime | None = None,
    auth_key_lookup: AuthKeyLookup | None = None,
) -> VerifiedSignIn:
    """Sign-in's checks for any text this server asks a wallet to sign (a sign-in, a peer binding): the wallet
    signed `expected_message` exactly, with a nonce this server issued for that message and that address, for
    this origin and chain, with a key that owns the address. Raises SignInError; spends the nonce last."""
    now = now or datetime.now(UTC)
    claimed = normalize_address(request.address)
    public_key = _parse_public_key(request.public_key)
    signature = _parse_signature(request.signature)
    fields = _parse_message(request.full_message, expected_message)

    _check_window(fields.window, now)
    _check_application(fields.application, origin)
    _check_signed_address(fields.address, claimed)
    _check_chain(fields.chain, chain_id)
    _check_issued(await asyncio.to_thread(store.get, fields.nonce), fields, claimed,  # the store may be a DB
                  expected_message)
    if not public_key.verify(fields.signed_bytes, signature):
        raise SignInError(
            "bad_signature",
            "The signature does not match the message and public key; sign the message again with your wallet.",
        )
    await _check_key_owns_address(public_key, AccountAddress.from_str_relaxed(claimed), auth_key_lookup)
    await asyncio.to_thread(_consume_nonce, store, fields.nonce, now)
    return VerifiedSignIn(address=claimed, public_key=str(public_key), format=fields.format)


def check_signed_text(full_message: str, expected_message: str, public_key: str, signature: str) -> str:
    """The address a wallet's signed text names, once `public_key` is shown to have signed `full_message`, its
    message is `expected_message` exactly and the key is the address's own (its derived authentication key; a
    rotated key is only accepted online). Only the signature and the text: the nonce, origin and chain rules held
    when `verify_wallet_message` accepted it; this checks a kept signature again later. Raises SignInError."""
    fields = _parse_message(full_message, expected_message)
    if fields.message != expected_message:
        raise SignInError("wrong_message", "The signed message is not the text this server asked the wallet to "
                          "sign; sign exactly that text, with nothing added.")
    key = _parse_public_key(public_key)
    if not key.verify(fields.signed_bytes, _parse_signature(signature)):
        raise SignInError("bad_signature", "The signature does not match the message and public key; sign the "
                          "message again with your wallet.")
    address = normalize_address(fields.address)
    if AccountAddress.from_str_relaxed(address).address not in derived_auth_keys(key):
        raise SignInError("wrong_key", f"This public key does not belong to address {address}; sign with the "
                          "wallet that owns it.")
    return address


def _parse_message(full_message: str, expected: str | None = None) -> _Fields:
    """The signed text's fields, in whichever of the two formats the wallet used. `expected` is the message the
    wallet was asked to sign: needed to find a message of several lines inside an AIP-62 full message."""
    if full_message.startswith(AIP62_PREFIX):
        return _parse_aip62(full_message, expected)
    if full_message.split("\n", 1)[0].endswith(SIWA_HEADER_SUFFIX):
        return _parse_siwa(full_message)
    raise SignInError(
        "bad_message",
        "fullMessage must be the exact text the wallet signed, starting with the line 'APTOS' "
        "(signMessage) or a 'Sign in with Aptos' message.",
        400,
    )


def _check_window(window: tuple[datetime | None, datetime | None], now: datetime) -> None:
    """AIP-116's optional Not Before and Expiration Time must hold now."""
    not_before, expiration = window
    if expiration is not None and now >= expiration:
        raise SignInError("expired_nonce", "The sign-in message has expired (its Expiration Time passed); "
                          "sign in again.")
    if not_before is not None and now < not_before:
        raise SignInError("not_yet_valid", "The sign-in message is not valid yet (Not Before is in the future); "
                          "check your computer's clock and sign in again.")


def _check_signed_address(signed: str, claimed: str) -> None:
    if normalize_address(signed) != claimed:
        raise SignInError(
            "wrong_address",
            f"The message was signed for address {signed}, but the request is for {claimed}; "
            "sign with the account you are signing in as.",
        )


def _check_issued(challenge: Challenge | None, fields: _Fields, claimed: str, expected: str) -> None:
    """The nonce was issued by this server, for this address and for the expected message (a binding's nonce
    does not sign in), with exactly the message that was signed."""
    if challenge is None:
        raise _unknown_nonce()
    if challenge.address != claimed:
        raise SignInError(
            "wrong_address", "This nonce was issued for another address; ask for a nonce for your address."
        )
    if challenge.message != expected:
        raise SignInError("wrong_message", "This nonce was issued for another message; ask for a new nonce for "
                          "this one.")
    if fields.message != challenge.message:
        raise SignInError(
            "wrong_message",
            "The signed message is not the one this server issued with this nonce; sign exactly the `message` "
            "returned by /auth/nonce, with nothing added.",
        )


def _unknown_nonce() -> SignInError:
    return SignInError("unknown_nonce", "The nonce in the message was not issued by this server; ask for a new nonce.")


def _consume_nonce(store: NonceStore, nonce: str, now: datetime) -> None:
    """Spend the nonce; of two sign-ins racing with the same one, only the first passes."""
    outcome = store.consume(nonce, now)
    if outcome == "used":
        raise SignInError(
            "replay", "This signed message was already used to sign in (replay); ask for a new nonce and sign again."
        )
    if outcome == "expired":
        raise SignInError(
            "expired_nonce", "The sign-in nonce expired (nonces last 5 minutes); ask for a new nonce and sign again."
        )
    if outcome != "ok":
        raise _unknown_nonce()


def _check_application(application: str, origin: str | None) -> None:
    """`application` must be the configured public origin exactly; with none, a loopback origin."""
    if ChainSettings(origin=origin).accepts_application(application):
        return
    if origin is not None:
        raise SignInError(
            "wrong_origin",
            f"The message was signed for {_shown(application)}, not for this server ({origin}); "
            f"sign in from {origin}.",
        )
    raise SignInError(
        "wrong_origin",
        f"The message was signed for {_shown(application)}, but this server accepts sign-ins from loopback "
        "addresses only (http://127.0.0.1, localhost, [::1]) because COTRAIN_PUBLIC_ORIGIN is not set; open "
        "the server on this machine, or ask its operator to set COTRAIN_PUBLIC_ORIGIN.",
    )


def _check_chain(chain: str | None, chain_id: int | None) -> None:
    if chain_id is None:
        raise SignInError(
            "no_chain", "This server has no Aptos chain id configured, so it cannot check which network a "
            "wallet signed for; its operator must set APTOS_CHAIN_ID (or APTOS_NETWORK).", 503)
    if chain is None:
        raise SignInError(
            "wrong_chain",
            f"The signed message has no chain id; sign with the chain id included (signMessage({{chainId: true}}), "
            f"chain {chain_id}).",
        )
    if not _chain_matches(chain, chain_id):
        raise SignInError(
            "wrong_chain",
            f"The wallet signed for chain {_shown(chain)}, but this server uses chain id {chain_id}; "
            "switch the wallet's network and sign again.",
        )


async def _check_key_owns_address(
    public_key: ed25519.PublicKey, address: AccountAddress, lookup: AuthKeyLookup | None
) -> None:
    on_chain = await lookup(address) if lookup is not None else None
    if on_chain is not None:
        if on_chain in derived_auth_keys(public_key):
            return
        raise SignInError(
            "wrong_key",
            f"This public key is not the current key of account {address} on chain (its authentication key "
            "differs); connect the wallet that holds the account's key.",
        )
    # No node, or an account not yet on chain: its address is its original authentication key.
    if address.address not in derived_auth_keys(public_key):
        raise SignInError(
            "wrong_key",
            f"This public key does not belong to address {address}; connect the wallet that owns it.",
        )


def node_auth_key_lookup(node_url: str) -> AuthKeyLookup:
    """An AuthKeyLookup that asks the Aptos node (REST `GET /accounts/{address}`) via aptos-sdk."""
    from aptos_sdk.async_client import ApiError, RestClient

    async def lookup(address: AccountAddress) -> bytes | None:
        client = RestClient(node_url)
        try:
            data = await client.account(address)
        except ApiError as exc:
            if exc.status_code == 404:
                return None
            raise SignInError(
                "node_error",
                f"The Aptos node at {node_url} did not answer the account lookup ({exc.status_code}); "
                "try again shortly.",
                503,
            ) from None
        finally:
            await client.close()
        return bytes.fromhex(data["authentication_key"].removeprefix("0x"))

    return lookup
