"""The `cotrain` command. Each area registers its commands from its own module, so the modules
stay small and import their heavy dependencies (torch, hivemind, the server) only when run."""

from __future__ import annotations

import typer

from cotrain.cli import (
    audit_cmd,
    backup_cmd,
    chain_cmd,
    config_cmd,
    core_cmd,
    db_cmd,
    p2p_cmd,
    platform_cmd,
    server_cmd,
    users_cmd,
)

app = typer.Typer(
    name="cotrain",
    help="CoTrain: train language models together.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (config_cmd, core_cmd, server_cmd, db_cmd, p2p_cmd, chain_cmd, users_cmd, audit_cmd,
               platform_cmd, backup_cmd):  # issue 17: login, sessions, models list/compare/download
    module.register(app)


def main() -> None:
    app()
