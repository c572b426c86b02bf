"""The chain area: Aptos wallet sign-in, the tamper-evident contribution ledger, and reward payouts.

Modules, one job each:
  settings.py       environment → ChainSettings (network / chain id, node URL, origin, payout backend)
  keys.py           the platform's ledger key and the treasury key (env or 0600 key file, never the DB)
  signin.py         nonces and verification of AIP-62 signMessage / AIP-116 sign-in responses
  nonces.py         the DB-backed nonce store (single use, shared by server replicas)
  tokens.py         bearer tokens bound to a wallet address, signed with the platform key
  contributions.py  DHT progress records (cotrain.p2p.progress.PeerProgress) → per-peer totals, plausibility checks
  rewards.py        pro-rata split of a reward pool with a deterministic remainder
  ledger.py         append-only, hash-chained, Ed25519-signed ledger entries and their verification
  aptos_tx.py       batch_transfer transactions built and signed with aptos-sdk
  payouts.py        payout backends `local` and `aptos` (idempotent, crash-safe); audit entries via a callable
  orm.py            the tables (on cotrain.db.Base) and their status enums; migrations:
                    db/migrations/versions/c000*_chain_*.py
  errors.py         ChainError
  bindings.py       a session's peer bound to a wallet (signed by the peer's key and by the wallet's)
  wallet_binding.py the wallet's half signed by a browser wallet (signMessage's full message; sign-in's rules)
  binding_token.py  the peer's half as one pasteable token (`cotrain rewards peer-signature` → the Rewards page)
  settlement.py     the steps in the caller's transaction: reward pool, kept progress, contributions, rewards
  service.py        ChainService, the one service the server holds: sync DB/DHT steps, async payouts and loop
  queries.py        read views: my contributions, my rewards, a session's contributors
  runtime.py        chain-level wiring: the platform ledger, the configured payout backend
  treasury.py       the treasury's on-chain balance (reward pools within what it can pay)
  wallet_signin.js  the browser side of sign-in (injected wallet → nonce → signMessage → verify)

The HTTP routes are the server's (server/api/wallet.py, server/api/rewards.py); the server hands the
service what it needs from there (a DHT reader, the audit writer, its sessions: server/chain_bridge.py).
This package never imports `cotrain.server`, `cotrain.core`, `cotrain.ui` or `cotrain.cli`; below it are only
`cotrain.db`, `cotrain.config`, `cotrain.p2p`, `cotrain.paths` and `cotrain.hashchain` (tests/test_layering.py).
"""
