"""The wallet's half of a binding signed by a browser wallet (AIP-62 `signMessage`), which signs not the bare
statement but a wallet-standard full message around it. The same rules as sign-in hold (`verify_wallet_message`):
a nonce this server issued for exactly this statement and this wallet, used once, the configured origin and
chain, and a key that owns the wallet. The peer's half is checked first, so a bad one does not spend the nonce.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from cotrain.chain.bindings import SignedBinding, check_peer_half, record_binding, wallet_statement
from cotrain.chain.orm import PeerBinding
from cotrain.chain.signin import Challenge, SignInRequest, issue_challenge, normalize_address, verify_wallet_message

if TYPE_CHECKING:
    from cotrain.chain.service import ChainService


def issue_binding_nonce(chain: ChainService, session_id: str, peer_id: str, address: str) -> Challenge:
    """A one-time nonce for `address` to sign the wallet's statement of (session, peer) with; its `message` is
    what the wallet is to sign. The application the wallet signs is checked when the nonce is used (the public
    origin, or a loopback one); the one kept with the nonce is only a note."""
    statement = wallet_statement(session_id, peer_id).decode()
    application = chain.settings.origin or "http://127.0.0.1"
    return issue_challenge(chain.nonces, address, application, chain.settings.chain_id,
                           ttl_s=chain.settings.nonce_ttl_s, message=statement)


async def bind_with_wallet_message(chain: ChainService, binding: SignedBinding) -> PeerBinding:
    """Check the peer's half, then the browser wallet's (spending its nonce), then record the binding with both.
    Raises BadBindingSignature, SignInError (refused wallet half: the reason and a sentence) or AlreadyBound."""
    if not (binding.wallet_public_key and binding.wallet_signature and binding.wallet_full_message):
        raise ValueError("bind_with_wallet_message needs the wallet's public key, signature and full message")
    check_peer_half(binding)
    request = SignInRequest(normalize_address(binding.address), binding.wallet_public_key,
                            binding.wallet_full_message, binding.wallet_signature)
    await verify_wallet_message(request, wallet_statement(binding.session_id, binding.peer_id).decode(), chain.nonces,
                                chain.settings.origin, chain.settings.chain_id, auth_key_lookup=chain.auth_key_lookup)

    def record() -> PeerBinding:
        with chain.factory.begin() as db:
            return record_binding(db, binding)

    return await asyncio.to_thread(record)
