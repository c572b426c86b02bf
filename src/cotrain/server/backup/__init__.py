"""Backups of a platform: `cotrain backup DIR` and `cotrain restore DIR` (README, "Backups and restore").

A backup directory holds
    manifest.json            what follows, each file's size and sha256, the Alembic revisions, the version
    database/cotrain.db      SQLite's online backup, or database/cotrain.pgdump (pg_dump --format=custom)
    keys/ledger.key          the ledger signing key (mode 600), so the restored ledger still verifies
    files/<path>             the session files (checkpoints, final models, logs, generated configs) when copied

`take.py` writes one, `restore.py` checks one completely and then writes it back; `manifest.py` is the
format and its checks on hostile input, `database.py` the two databases, `files.py` the session files.
"""

from __future__ import annotations

from cotrain.server.backup.manifest import BackupError
from cotrain.server.backup.restore import RestoreReport, restore_backup
from cotrain.server.backup.take import BackupReport, take_backup

__all__ = ["BackupError", "BackupReport", "RestoreReport", "restore_backup", "take_backup"]
