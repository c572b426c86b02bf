"""Commands of this area are added by its package as it lands."""

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
