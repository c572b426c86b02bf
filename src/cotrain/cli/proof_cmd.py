"""`cotrain verify-session` and `cotrain ledger export`: a session's rewards rebuilt from its ledger entries
(cotrain.chain.proof), from the server's database or offline from an exported file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cotrain.cli.errors import UserError, friendly_errors

if TYPE_CHECKING:
    from cotrain.chain.proof import Entry, ProofReport


def read_export(path: Path) -> list[Entry]:
    """The entries of a `cotrain ledger export` file (one JSON object a line)."""
    from cotrain.chain.proof import Entry

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"Cannot read {path}: {exc.strerror}.") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(Entry.parse(json.loads(line)))
        except ValueError as exc:
            raise UserError(f"{path}, line {number}: not a ledger entry ({exc}).") from None
    return entries


def show(report: ProofReport) -> None:
    """A short summary on stdout, or each problem on stderr and exit 1."""
    if not report.entries:
        raise UserError(f"The ledger holds no entries of session {report.session_id}.")
    if not report.ok:
        print(f"session {report.session_id} does NOT verify: {len(report.problems)} problem(s) in "
              f"{report.entries} entries:", file=sys.stderr)
        for problem in report.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise typer.Exit(1)
    how = (f"{report.verified_rounds} verified peer-round(s) in {report.rounds} judged round(s)" if report.by_verdicts
           else "settled by progress records (not in the ledger): rewards and payouts checked")
    pool = f", pool {report.pool} {report.asset}, paid {report.paid}, due {report.due}" if report.pool is not None \
        else ""
    print(f"session {report.session_id} OK: {report.entries} entries signed by {', '.join(report.signers)}; "
          f"{len(report.peers)} peer(s), {how}{pool}")
    for peer in report.peers:
        reward = "" if peer.rebuilt_reward is None else f", reward {peer.rebuilt_reward}"
        print(f"  {peer.peer_id}  {peer.address or '-'}  {peer.verified_rounds}/{peer.judged_rounds} rounds verified, "
              f"{peer.rebuilt_tokens} tokens{reward}")


@friendly_errors
def verify_session(
    session: str = typer.Argument(None, help="Training session id (with --from: the file's, when it holds one)."),
    from_file: Path = typer.Option(None, "--from", help="Check a `cotrain ledger export` file instead of the "
                                   "server's database (offline)."),
    key: list[str] = typer.Option(None, "--key", help="With --from: the platform's public key (hex); repeat for "
                                  "older keys. Without it, the one key that signed every entry is shown."),
) -> None:
    """Rebuild a session's verdict checks, contributions, rewards and payouts from its ledger entries and check
    them against what was recorded and paid. Exits 1 naming each entry that differs."""
    from cotrain.chain.proof import verify_session as rebuild
    from cotrain.chain.proof import verify_session_db

    if from_file is not None:
        entries = read_export(from_file)
        sessions = sorted({e.session_id for e in entries})
        if session is None and len(sessions) != 1:
            raise UserError(f"{from_file} holds the entries of {len(sessions)} sessions; name the one to check.")
        show(rebuild(entries, session or sessions[0], set(key) if key else None))
        return
    if session is None:
        raise UserError("Name the session to check (or give --from FILE).")
    from cotrain.cli.chain_cmd import _open_database, _run

    def check() -> None:
        from cotrain.chain.runtime import platform_ledger

        with _open_database()() as db:
            show(verify_session_db(db, session, platform_ledger(create_key=False).trusted))

    _run(check)


@friendly_errors
def ledger_export(
    session: str = typer.Option(..., "--session", "-s", help="Training session id."),
    out: Path = typer.Option(None, "--out", "-o", help="Write here instead of stdout."),
) -> None:
    """A session's ledger entries as JSON lines, for `cotrain verify-session --from FILE` anywhere."""
    from cotrain.chain.proof import session_entries
    from cotrain.cli.chain_cmd import _open_database

    with _open_database()() as db:
        entries = session_entries(db, session)
    if not entries:
        raise UserError(f"The ledger holds no entries of session {session}.")
    text = "".join(json.dumps(e.as_dict(), sort_keys=True) + "\n" for e in entries)
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text, encoding="utf-8")
    print(f"{len(entries)} ledger entries of session {session} written to {out}", file=sys.stderr)


def register(app: typer.Typer, ledger_app: typer.Typer) -> None:
    app.command("verify-session")(verify_session)
    ledger_app.command("export")(ledger_export)
