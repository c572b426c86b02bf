"""`cotrain ledger verify` and `cotrain rewards` (list, set a pool, pay). The chain package is imported only
when a command runs."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from cotrain.cli.errors import UserError, friendly_errors

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")

ledger_app = typer.Typer(help="The tamper-evident contribution ledger.", no_args_is_help=True)
rewards_app = typer.Typer(help="Rewards for contributors, and their payouts.", invoke_without_command=True)


def _chain_errors() -> tuple[type[Exception], ...]:
    from cotrain.chain.errors import ChainError
    from cotrain.chain.keys import KeyConfigError
    from cotrain.chain.payouts import PayoutError
    from cotrain.chain.settings import ChainConfigError

    return KeyConfigError, PayoutError, ChainError, ChainConfigError


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except _chain_errors() as exc:
        raise UserError(str(exc)) from None


def _open_database() -> sessionmaker[Session]:
    """The server's database (DATABASE_URL, else the SQLite file under COTRAIN_HOME), migrated."""
    from cotrain.db import default_database_url, open_database
    from cotrain.paths import cotrain_home

    return open_database(default_database_url(cotrain_home()))[1]


@ledger_app.command("verify")
@friendly_errors
def ledger_verify() -> None:
    """Check every ledger entry (hash chain, platform signatures) and the rows copied from them.
    Exits 1 when anything was changed. An empty ledger (a fresh COTRAIN_HOME) is valid."""

    from aptos_sdk import ed25519
    from sqlalchemy import func, select
    from sqlalchemy.exc import OperationalError

    from cotrain.chain.ledger import Ledger
    from cotrain.chain.orm import LedgerEntryRow
    from cotrain.chain.runtime import platform_ledger
    from cotrain.db import DatabaseSettings
    from cotrain.paths import cotrain_home

    def verify() -> None:
        path = cotrain_home() / "cotrain.db"
        if not DatabaseSettings.from_env().database_url and not path.exists():
            print(f"ledger OK: empty (no database at {path} yet, so nothing was recorded)")
            return
        try:
            factory = _open_database()
            with factory() as db:
                entries = db.scalar(select(func.count()).select_from(LedgerEntryRow)) or 0
                # no entry to check a signature of: the key is not needed (rows that point into an
                # empty ledger are still reported)
                ledger = platform_ledger(create_key=False) if entries else Ledger(ed25519.PrivateKey.random(), [])
                report = ledger.verify(db)
        except OperationalError as exc:
            raise UserError(f"The database did not answer ({exc.orig.__class__.__name__}); check DATABASE_URL "
                            "and COTRAIN_HOME.") from None
        if report.ok:
            print(f"ledger OK: {report.entries} entries, head {report.head}" if report.entries
                  else "ledger OK: empty (no entries yet)")
            return
        print(f"ledger TAMPERED: {len(report.problems)} problem(s) in {report.entries} entries:", file=sys.stderr)
        for problem in report.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise typer.Exit(1)

    _run(verify)


@rewards_app.callback()
@friendly_errors
def rewards_list(
    ctx: typer.Context,
    session: str = typer.Option(None, "--session", "-s", help="Only this training session."),
    address: str = typer.Option(None, "--address", "-a", help="Only this wallet address."),
) -> None:
    """List rewards with their payout status (and explorer links once sent)."""
    if ctx.invoked_subcommand is not None:
        return
    from cotrain.chain.queries import reward_views
    from cotrain.chain.settings import ChainSettings

    def show() -> None:
        settings = ChainSettings.from_env()
        with _open_database()() as db:
            views = reward_views(db, settings, session_id=session, address=address)
        if not views:
            print("no rewards yet")
            return
        for v in views:
            link = f"  {v.explorer_url}" if v.explorer_url else (f"  tx {v.tx_hash}" if v.tx_hash else "")
            print(f"{v.session_id}  {v.address}  {v.amount} {v.asset}  {v.payout_status}{link}")

    _run(show)


@rewards_app.command("set-pool")
@friendly_errors
def rewards_set_pool(
    session: str = typer.Argument(..., help="Training session id."),
    amount: int = typer.Argument(..., help="Pool size in the asset's smallest unit (octas for APT)."),
    asset: str = typer.Option("APT", help="APT, or a fungible asset's metadata address."),
) -> None:
    """Set a session's reward pool (once)."""
    from cotrain.chain.runtime import platform_ledger
    from cotrain.chain.settlement import set_reward_pool

    def set_pool() -> None:
        factory = _open_database()
        with factory.begin() as db:
            set_reward_pool(db, platform_ledger(), session, amount, asset)
        print(f"reward pool of session {session}: {amount} {asset}")

    _run(set_pool)


@rewards_app.command("pay")
@friendly_errors
def rewards_pay() -> None:
    """Send the payouts due (COTRAIN_PAYOUT_BACKEND=aptos) or record them as due (local). Safe to re-run:
    nobody is paid twice, nobody is skipped."""
    from cotrain.chain.runtime import platform_ledger, run_payouts
    from cotrain.chain.settings import ChainSettings
    from cotrain.server.chain_bridge import payout_audit  # payout events go to the server's audit log

    def pay() -> None:
        settings = ChainSettings.from_env()
        factory = _open_database()
        report = asyncio.run(run_payouts(factory, platform_ledger(), settings, payout_audit(factory)))
        if settings.payout_backend == "local":
            print(f"{report.recorded_due} payout(s) recorded as due (local backend: nothing sent)")
        for tx in report.committed:
            print(f"committed {tx}")
        for tx in report.failed:
            print(f"failed {tx}")
        for message in report.messages:
            print(message, file=sys.stderr)
        if report.pending or report.failed:
            raise typer.Exit(3)

    _run(pay)


@rewards_app.command("bind")
@friendly_errors
def rewards_bind(
    session: str = typer.Option(..., "--session", "-s", help="The session the peer trains."),
    peer_key_file: Path | None = typer.Option(
        None, "--peer-key-file", help="The peer's identity file (default: models/checkpoints/SESSION/p2p-identity.key "
        "under this machine's CoTrain home, where `cotrain join` keeps it); the peer id derives from it."),
    key_file: Path = typer.Option(..., "--wallet-key-file", help="File (mode 600) with the wallet's Ed25519 "
                                  "private key; only a signature leaves this machine."),
    server: str = typer.Option(..., "--server", help="The CoTrain server, e.g. http://127.0.0.1:8000."),
) -> None:
    """Prove that a peer of a session works for your wallet, so its contribution is rewarded: the peer's key
    signs (session, wallet), the wallet's key signs (session, peer id), and both signatures go to the server."""
    from cotrain.cli.binding_client import post_binding, sign_from_files
    from cotrain.p2p.identity import identity_path

    def bind() -> None:
        binding = sign_from_files(session, peer_key_file or identity_path(None, session), key_file)
        post_binding(server, binding)
        print(f"peer {binding.peer_id} of session {session} is bound to wallet {binding.address}")

    _run(bind)


@rewards_app.command("peer-signature")
@friendly_errors
def rewards_peer_signature(
    session: str = typer.Option(..., "--session", "-s", help="The session the peer trains."),
    wallet: str = typer.Option(..., "--wallet", help="The wallet address the peer is to be paid to."),
    peer_key_file: Path | None = typer.Option(
        None, "--peer-key-file", help="The peer's identity file (default: models/checkpoints/SESSION/p2p-identity.key "
        "under this machine's CoTrain home, where `cotrain join` keeps it); the peer id derives from it."),
) -> None:
    """Print the peer's half of its binding to WALLET as one token: paste it into the Rewards page's "Bind a
    running peer" card, where your browser wallet signs the other half. The token holds no secret."""
    from cotrain.cli.binding_client import peer_half_token_from_file
    from cotrain.p2p.identity import identity_path

    _run(lambda: print(peer_half_token_from_file(session, peer_key_file or identity_path(None, session), wallet)))


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    from cotrain.cli import proof_cmd  # verify-session, ledger export

    app.add_typer(ledger_app, name="ledger")
    app.add_typer(rewards_app, name="rewards")
    proof_cmd.register(app, ledger_app)
