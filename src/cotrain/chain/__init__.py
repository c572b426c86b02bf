"""The chain area: Aptos wallet sign-in, the tamper-evident contribution ledger, and reward payouts.

Modules, one job each:
  settings.py       environment → ChainSettings (network / chain id, node URL, origin, payout backend)
  keys.py           the platform's ledger key and the treasury key (env or 0600 key file, never the DB)
  signin.py         nonces and verification of AIP-62 signMessage / AIP-116 sign-in responses
  nonces.py         the DB-backed nonce store (single use, shared by server replicas)
  tokens.py         bearer tokens bound to a wallet address, signed with the platform key
  contributions.py  DHT progress records → per-peer totals, with plausibility checks
  rewards.py        pro-rata split of a reward pool with a deterministic remainder
  ledger.py         append-only, hash-chained, Ed25519-signed ledger entries and their verification
  aptos_tx.py       batch_transfer transactions built and signed with aptos-sdk
  payouts.py        payout backends `local` and `aptos` (idempotent, crash-safe)
  models.py         the tables (on the server's Base); migrations: server/migrations/versions/c000*_chain_*.py
  service.py        the DB operations behind the hooks (pool, bindings, settlement)
  hooks.py          what the server calls: on_session_created, on_progress, on_session_completed, pay_due
  queries.py        read views: my contributions, my rewards, a session's contributors
  runtime.py        wiring for the CLI and server: database URL, platform ledger, configured backend
  api.py            the HTTP API (`router`, included by the server under /api/v1)
  wallet_signin.js  the browser side of sign-in (injected wallet → nonce → signMessage → verify)

This package never imports `cotrain.core`.
"""
