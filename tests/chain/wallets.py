"""A test wallet: an aptos-sdk key that signs the way Petra (AIP-62) and AIP-116 wallets do."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aptos_sdk import ed25519
from aptos_sdk.account import Account


@dataclass
class Wallet:
    account: Account

    @classmethod
    def create(cls) -> Wallet:
        return cls(Account.generate())

    @property
    def address(self) -> str:
        return str(self.account.address())

    @property
    def public_key(self) -> str:
        return str(self.account.public_key())

    def sign_message(self, *, message: str, nonce: str, application: str, chain_id: int | None,
                     order: tuple[str, ...] = ("address", "application", "chainId", "message", "nonce"),
                     address: str | None = None) -> dict[str, str]:
        """What AIP-62 `signMessage` returns: the full message and its signature, in hex."""
        values = {"address": address or self.address, "application": application,
                  "chainId": str(chain_id), "message": message, "nonce": nonce}
        full = "APTOS\n" + "\n".join(f"{k}: {values[k]}" for k in order if k != "chainId" or chain_id)
        return {"fullMessage": full, "signature": str(self.account.sign(full.encode()))}

    def sign_in_siwa(self, *, domain: str, uri: str, nonce: str, chain: str, extra: str = "",
                     statement: str = "Sign in to CoTrain") -> dict[str, str]:
        """What AIP-116 `signIn` signs: sha3_256("SIGN_IN_WITH_APTOS::") || message."""
        text = (f"{domain} wants you to sign in with your Aptos account:\n{self.address}\n\n"
                f"{statement}\n\nURI: {uri}\nVersion: 1\nChain ID: {chain}\nNonce: {nonce}{extra}")
        signed = hashlib.sha3_256(b"SIGN_IN_WITH_APTOS::").digest() + text.encode()
        signature = self.account.private_key.sign(signed)
        assert isinstance(signature, ed25519.Signature)
        return {"fullMessage": text, "signature": str(signature)}
