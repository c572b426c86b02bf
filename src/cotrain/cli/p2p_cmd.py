"""P2P commands: `cotrain join` (volunteer a machine to a DiLoCo session) and `cotrain doctor`
(check that this machine can take part: p2pd starts, a DHT forms, records round-trip)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cotrain.cli.errors import UserError, friendly_errors
from cotrain.config.loader import deep_merge

if TYPE_CHECKING:
    from cotrain.config.schema import CotrainConfig

ENDED = ("completed", "failed", "cancelled")  # a session in one of these has no run to join
PEERS_OPTION = typer.Option(
    [], "--initial-peers", help="Multiaddr of a peer of the session, /ip4/HOST/tcp/PORT/p2p/PEER_ID (repeatable)."
)


@friendly_errors
def join(
    initial_peers: list[str] = PEERS_OPTION,
    session: str = typer.Option(..., "--session", help="The session id to train (the same on every peer)."),
    server: str | None = typer.Option(
        None, "--server", help="The CoTrain server running the session, e.g. https://cotrain.example.org: the "
        "session's config and the server's DHT peers come from it."),
    token: str | None = typer.Option(
        None, "--token", envvar="COTRAIN_TOKEN", help="API token for a private session (with --server)."),
    wallet: str | None = typer.Option(None, "--wallet", help="Aptos address (0x...) credited for your work."),
    wallet_key_file: Path | None = typer.Option(
        None, "--wallet-key-file", help="With --server: the wallet's Ed25519 key file (mode 600). Before training, "
        "this peer's key and the wallet's sign the binding of this peer to the wallet and send it to the server, "
        "so the work is paid there; only the signatures leave this machine."),
    gpus: int = typer.Option(
        1, "--gpus", min=1, help="GPUs (processes) of this machine that train together as one peer (DDP inside it)."),
    config: Path | None = typer.Option(
        None, "--config", help="The session's config (same model and data as the others); with --server, "
        "this file is used instead of the server's."),
    host: list[str] = typer.Option([], "--host-maddr", help="Listen address (default /ip4/0.0.0.0/tcp/0)."),
    announce: list[str] = typer.Option([], "--announce-maddr", help="Public address to announce (behind NAT)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: section.key=value (repeatable)."),
    validate: bool = typer.Option(
        False, "--validate", help="Make this peer a validator too: it judges every member of every round (did it "
        "commit, average, and train on its own shard?) and publishes the peers it caught; only peers that trust it "
        "(distributed.diloco.validators) leave them out. Costs a download and a few forward passes per member."),
) -> None:
    """Join a DiLoCo session as a volunteer peer: download the current model from the other peers,
    train `inner_steps` local steps at a time, and average with them.

    `--server URL --session ID` takes the config and the bootstrap peers from the server;
    `--initial-peers MADDR --session ID [--config FILE]` joins without one."""
    if wallet_key_file:  # this machine's key file is checked before any server is asked
        wallet = _wallet_of_key(wallet_key_file, wallet, server)
    cfg = join_config(session, server=server, token=token, initial_peers=initial_peers, wallet=wallet, gpus=gpus,
                      config=config, host=host, announce=announce, set_=set_, validate=validate)
    if wallet_key_file and server:
        _bind(server, cfg, wallet_key_file)
    elif wallet:
        typer.echo(f"note: this peer is paid to {wallet} only once it is bound to it by both keys: run `cotrain join` "
                   "with --wallet-key-file, or `cotrain rewards bind --session SESSION --wallet-key-file FILE --server "
                   "URL` on this machine", err=True)
    from cotrain.core.launch import maybe_launch_torchrun

    # several processes for one peer: torchrun starts them, and its workers read a config file
    code = maybe_launch_torchrun(cfg, _write_for_workers(cfg), []) if gpus > 1 else None
    if code is None:
        from cotrain.core.train import run  # torch: imported once the arguments are known to be good

        code = run(cfg)
    raise typer.Exit(code)


def join_config(
    session: str, *, server: str | None = None, token: str | None = None, initial_peers: Sequence[str] = (),
    wallet: str | None = None, gpus: int = 1, config: Path | None = None, host: Sequence[str] = (),
    announce: Sequence[str] = (), set_: Sequence[str] = (), validate: bool = False,
) -> CotrainConfig:
    """The config `cotrain join` trains with (UserError when it cannot be built): the server's config as a
    volunteer takes it (or `config`), its bootstrap peers and validators, this peer's own settings, then `set_`
    (a volunteer's own `distributed.diloco.validators` there, or in `config`, wins over the server's)."""
    from cotrain.config import load_config

    base: dict = {}
    peers = list(initial_peers)
    validators: list[str] = []
    if server:
        base, server_peers, dropped, validators = _from_server(server, session, token)
        peers = _unique(server_peers + list(base.get("distributed", {}).get("diloco", {}).get("initial_peers", []))
                        + peers)
        if config is not None:
            base = {}  # the volunteer's own file wins over the server's config
            validators = [] if _names_validators(config) else validators
        else:
            _check_dropped(session, dropped, list(set_))
        if not peers:
            raise UserError(
                f"The server at {server} has no running DHT node yet, so there is no peer to join through. Ask its "
                "admin to start it (the Network page, or POST /api/v1/hivemind/start) and try again, or pass "
                "--initial-peers with the address of a peer of the session."
            )
    elif token:
        raise UserError("--token is for --server: give --server with the URL of the server running the session")
    if not peers:
        raise UserError("give --server with the URL of the server running the session, or --initial-peers with the "
                        "address of a peer of the session (shown in its log)")
    diloco: dict = {"initial_peers": peers}
    if validators:
        diloco["validators"] = validators
    if validate:
        diloco["validate"] = True
    if wallet:
        diloco["wallet"] = wallet
    if host:
        diloco["host_maddrs"] = list(host)
    if announce:
        diloco["announce_maddrs"] = list(announce)
    data = {"session": {"id": session}, "distributed": {"strategy": "diloco", "gpus_per_node": gpus, "diloco": diloco}}
    if config is None and not base:
        data["data"] = {"dataset": "stdlib"}  # the built-in defaults, as a session started the same way uses
    return load_config(config, overrides=set_, data=deep_merge(base, data))


def _names_validators(config: Path) -> bool:
    """Whether the volunteer's own config file says whom to trust (then the server's validators are not added)."""
    from cotrain.config.loader import read_toml

    return "validators" in read_toml(config).get("distributed", {}).get("diloco", {})


def _wallet_of_key(key_file: Path, wallet: str | None, server: str | None) -> str:
    """The address of the wallet in `key_file`, checked against --wallet; the binding needs --server."""
    from aptos_sdk.account_address import AccountAddress

    from cotrain.cli.binding_client import load_wallet

    if not server:
        raise UserError("--wallet-key-file binds this peer to the wallet on the server running the session: give "
                        "--server with its URL too")
    address = str(AccountAddress.from_key(load_wallet(key_file).public_key()))
    if wallet and _normalized(wallet) != address:
        raise UserError(f"--wallet {wallet} is not the wallet of --wallet-key-file {key_file} ({address}); give one "
                        "of them, or the two of the same wallet")
    return address


def _normalized(address: str) -> str | None:
    from aptos_sdk.account_address import AccountAddress

    try:
        return str(AccountAddress.from_str_relaxed(address.strip()))
    except Exception:  # not an address: it matches no key
        return None


def _bind(server: str, cfg, wallet_key_file: Path) -> None:
    """Bind the peer this run will be (its identity file, made now if new) to the wallet, on the server."""
    from cotrain.cli.binding_client import post_binding, sign_from_files
    from cotrain.p2p.identity import identity_path, load_or_create_identity

    path = identity_path(cfg.checkpoint.output_path, cfg.session.id)
    load_or_create_identity(path)
    binding = sign_from_files(cfg.session.id, path, wallet_key_file)
    post_binding(server, binding)
    typer.echo(f"peer {binding.peer_id} of session {cfg.session.id} is bound to wallet {binding.address}", err=True)


def _write_for_workers(cfg) -> Path:
    from cotrain.config.writer import config_to_toml
    from cotrain.paths import Layout

    path = Layout.from_env().ensure().generated_configs / f"join-{cfg.session.id}.toml"
    path.write_text(config_to_toml(cfg, header=f"written by cotrain join for session {cfg.session.id}", full=True))
    return path


def _from_server(server: str, session: str, token: str | None) -> tuple[dict, list[str], list[str], list[str]]:
    """(what a volunteer takes of the session's config, the server's DHT addresses, the config keys
    dropped, the peers whose exclusions to follow); a UserError when the server cannot give them."""
    from cotrain.p2p.server_join import JoinError, fetch_join_info, volunteer_config

    try:
        info = fetch_join_info(server, session, token)
    except JoinError as exc:
        raise UserError(str(exc)) from None
    if info.strategy != "diloco":
        raise UserError(
            f"Session {session} trains with the {info.strategy} strategy, which runs only on the server's own "
            "machines; volunteers can join DiLoCo sessions only (the server's Network page lists them)."
        )
    if info.status in ENDED:
        raise UserError(
            f"Session {session} is {info.status} on {server}: its training has ended, so there is no run to join. "
            "Pick a queued or running DiLoCo session on the server's Sessions page."
        )
    kept, dropped = volunteer_config(info.config)
    return kept, info.initial_peers, dropped, info.validators


def _check_dropped(session: str, dropped: list[str], overrides: list[str]) -> None:
    """Warn about the server's keys a volunteer does not take; refuse to train on other data than the
    session's when the session reads files on the server's machine and the volunteer named none."""
    if not dropped:
        return
    typer.echo(f"warning: ignored {len(dropped)} key(s) of the server's config that a volunteer never takes from a "
               f"server (paths on this machine, its wallet and addresses are yours to set): {', '.join(dropped)}",
               err=True)
    named = {item.partition("=")[0].strip() for item in overrides}
    read_from = [key for key in ("data.data_path", "data.dataset") if key in dropped]  # "hf:/path" is a path too
    if read_from and not named & {"data.data_path", "data.dataset"}:
        raise UserError(
            f"Session {session} trains on files on the server's machine ({read_from[0]}), and a server cannot "
            "choose paths on yours: put a copy of the same data on this machine and pass "
            "--set data.data_path=PATH (or --set data.dataset=hf:/PATH for a save_to_disk folder), or --config "
            "with your own copy of the session's config."
        )


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


@friendly_errors
def doctor(
    initial_peers: list[str] = PEERS_OPTION,
    host: str = typer.Option("/ip4/0.0.0.0/tcp/0", "--host-maddr", help="Address to test listening on."),
) -> None:
    """Check that this machine can join the P2P network and report the addresses others can use."""
    checks: list[tuple[str, bool, str]] = []

    def report(name: str, ok: bool, detail: str) -> None:
        checks.append((name, ok, detail))
        mark = typer.style("ok  ", fg="green") if ok else typer.style("FAIL", fg="red")
        typer.echo(f"[{mark}] {name}: {detail}")

    try:
        from cotrain.p2p.dht import signer, start_dht, visible_maddrs
        from cotrain.p2p.progress import PeerProgress
        from cotrain.p2p.records import fetch_progress, publish_progress
    except Exception as exc:  # hivemind missing or broken
        report("hivemind", False, f"{exc}; reinstall with `pip install hivemind==1.1.12`")
        raise typer.Exit(1) from None

    started = time.monotonic()
    try:
        node = start_dht(host_maddrs=[host], startup_timeout=30)
    except Exception as exc:
        report("p2p daemon", False, f"{exc}")
        raise typer.Exit(1) from None
    report("p2p daemon", True, f"p2pd started, peer id {node.peer_id} ({time.monotonic() - started:.1f} s)")
    addresses = visible_maddrs(node)
    report("addresses", bool(addresses), ", ".join(addresses) or "none visible")
    try:
        loopback = [a for a in addresses if "/127.0.0.1/" in a] or addresses
        probe = start_dht(initial_peers=loopback[:1], host_maddrs=["/ip4/127.0.0.1/tcp/0"], startup_timeout=30)
        record = PeerProgress(peer_id=str(probe.peer_id), session_id="cotrain-doctor", step=0, outer_step=0,
                              tokens_per_second=0.0, samples=0, tokens=0)
        stored = publish_progress(probe, signer(probe), record, ttl=30)
        seen = [r.peer_id for r in fetch_progress(node, "cotrain-doctor")]
        report("local DHT", stored and str(probe.peer_id) in seen,
               "a signed record written by one node was read by another")
        probe.shutdown()
        if initial_peers:
            remote = start_dht(initial_peers=list(initial_peers), host_maddrs=[host], startup_timeout=30)
            report("network", True, f"joined the DHT through {', '.join(initial_peers)}")
            remote.shutdown()
    except Exception as exc:
        report("DHT", False, f"{exc}")
    finally:
        node.shutdown()
    failed = [name for name, ok, _ in checks if not ok]
    if failed:
        typer.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)
    typer.echo("this machine can join CoTrain sessions: cotrain join --server URL --session ID "
               "(or --initial-peers MADDR instead of --server)")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    app.command("join")(join)
    app.command("doctor")(doctor)
