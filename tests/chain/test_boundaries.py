"""DESIGN.md: `cotrain.chain` never imports `cotrain.core` (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

MODULES = ["api", "hooks", "payouts", "runtime", "service", "ledger", "signin", "contributions", "rewards",
           "aptos_tx", "queries", "nonces", "tokens", "keys", "settings", "orm"]


def test_chain_never_imports_core():
    code = ("import sys\n" + "".join(f"import cotrain.chain.{m}\n" for m in MODULES)
            + "print(','.join(m for m in sys.modules if m.startswith('cotrain.core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
