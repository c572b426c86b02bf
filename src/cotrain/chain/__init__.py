"""The chain area: Aptos wallet sign-in, the tamper-evident contribution ledger, and reward payouts.

Modules, one job each:
  settings.py       environment → ChainSettings (node URL, chain id, origin, payout backend)
  keys.py           the platform's ledger key and the treasury key (env or 0600 key file, never the DB)
  signin.py         nonces and verification of AIP-62 signMessage / AIP-116 sign-in responses
  tokens.py         bearer tokens bound to a wallet address, signed with the platform key
  contributions.py  DHT progress records → per-peer totals, with plausibility checks
  rewards.py        pro-rata split of a reward pool with a deterministic remainder
  ledger.py         append-only, hash-chained, Ed25519-signed ledger entries and their verification
  aptos_tx.py       batch_transfer transactions built and signed with aptos-sdk
  payouts.py        payout backends `local` and `aptos` (idempotent, crash-safe)
  models.py / store.py / service.py / api.py   the DB tables, their queries, the hooks and the HTTP API

This package never imports `cotrain.core`.
"""
