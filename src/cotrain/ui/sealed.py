"""Tokens the UI keeps for a browser are sealed before they reach its storage file.

NiceGUI's `app.storage.user` is a JSON file per browser under COTRAIN_HOME/ui-storage; a copy of that
folder (a backup, a support bundle) must not sign anyone in. Each value is encrypted and authenticated
(PyNaCl's SecretBox: XSalsa20-Poly1305) with a key derived from the UI's secret (COTRAIN_UI_SECRET or
COTRAIN_HOME/ui-secret, mode 600), which never enters the storage folder. A value sealed under another
secret, or altered, opens to None: the browser is simply signed out.
"""

from __future__ import annotations

import base64
import hashlib

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

PREFIX = "sealed:v1:"
_box: SecretBox | None = None


def set_secret(secret: str) -> None:
    """Derive the sealing key from the UI's secret (called once when the UI is mounted). The label keeps
    it apart from the same secret's other use, signing NiceGUI's session cookie."""
    global _box
    key = hashlib.blake2b(secret.encode(), digest_size=SecretBox.KEY_SIZE, person=b"cotrain-ui-token").digest()
    _box = SecretBox(key)


def _sealer() -> SecretBox:
    if _box is None:
        raise RuntimeError("The UI's sealing key is not set: cotrain.ui.mount(app) sets it from the UI secret.")
    return _box


def seal(value: str) -> str:
    return PREFIX + base64.urlsafe_b64encode(_sealer().encrypt(value.encode())).decode()


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def unseal(stored: str) -> str | None:
    """The value `seal` made, or None when it was sealed under another secret, altered or is not sealed."""
    if not is_sealed(stored):
        return None
    try:
        return _sealer().decrypt(base64.urlsafe_b64decode(stored[len(PREFIX):])).decode()
    except (CryptoError, ValueError):
        return None
