"""`cotrain config validate|show`."""

from __future__ import annotations

from pathlib import Path

import typer

from cotrain.cli.errors import friendly_errors
from cotrain.config import config_to_toml, load_config

config_app = typer.Typer(help="Check and print training configs.", no_args_is_help=True)


@config_app.command("validate")
@friendly_errors
def validate(
    file: Path = typer.Argument(..., help="A CoTrain TOML config."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: section.key=value (repeatable)."),
) -> None:
    """Exit 0 if FILE is a valid config; otherwise print every problem, one per line."""
    config = load_config(file, overrides=set_)
    m, d = config.model, config.distributed
    typer.echo(
        f"{file}: valid ({m.type} {m.size} {m.precision}, {d.strategy} on {d.nodes}×{d.gpus_per_node}, "
        f"session {config.session.id})"
    )


@config_app.command("show")
@friendly_errors
def show(
    file: Path = typer.Argument(..., help="A CoTrain TOML config."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: section.key=value (repeatable)."),
) -> None:
    """Print the config with every default filled in, after environment and --set overrides."""
    typer.echo(config_to_toml(load_config(file, overrides=set_), full=True), nl=False)


@config_app.command("reference")
def reference() -> None:
    """Print the Markdown reference of every config key (the README's config reference)."""
    from cotrain.config.reference import markdown_reference

    typer.echo(markdown_reference(), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
