import typer


def register(app: typer.Typer) -> None:
    """Engine commands: train, data prepare, models list (cotrain.core)."""
