"""Engine commands: `cotrain train`, `cotrain data prepare`, `cotrain models presets`."""

from __future__ import annotations

from pathlib import Path

import typer

from cotrain.cli.errors import fail, friendly_errors

data_app = typer.Typer(help="Prepare training data.", no_args_is_help=True)
models_app = typer.Typer(help="Model presets and trained models.", no_args_is_help=True)

SET_OPTION = typer.Option([], "--set", help="Override a config key: section.key=value (repeatable).")


@friendly_errors
def train(file: Path = typer.Argument(..., help="A CoTrain TOML config."), set_: list[str] = SET_OPTION) -> None:
    """Train a model from a config (resumes from its latest checkpoint when there is one).

    With nodes × gpus_per_node > 1 (ddp / fsdp) on one machine, this launches torchrun itself."""
    from cotrain.config import load_config
    from cotrain.core.launch import maybe_launch_torchrun
    from cotrain.core.train import run

    config = load_config(file, overrides=set_)
    code = maybe_launch_torchrun(config, file, set_)
    raise typer.Exit(run(config) if code is None else code)


@data_app.command("prepare")
@friendly_errors
def prepare(
    file: Path | None = typer.Argument(None, help="A config whose [data] section says what to prepare."),
    data_path: str | None = typer.Option(None, help="Raw .txt/.jsonl/.parquet file or folder."),
    dataset: str | None = typer.Option(
        None, help='"stdlib", or a Hugging Face dataset on this machine: "hf:NAME[:CONFIG]", "hf:/path".'
    ),
    tokenizer: str | None = typer.Option(None, help='"train" or a local tokenizer.json / directory.'),
    vocab_size: int | None = typer.Option(None, help="Vocabulary of a trained tokenizer."),
    max_bytes: int | None = typer.Option(None, help="Use at most this many bytes of raw text."),
    set_: list[str] = SET_OPTION,
) -> None:
    """Tokenize and pack a corpus into memory-mapped shards (does nothing if already prepared)."""
    from cotrain.config import load_config
    from cotrain.core.corpus import DataSourceError
    from cotrain.core.data import prepare_dataset
    from cotrain.paths import Layout

    flags = {
        "data_path": data_path, "dataset": dataset, "tokenizer": tokenizer, "vocab_size": vocab_size,
        "max_bytes": max_bytes,
    }
    extra = {"data": {k: v for k, v in flags.items() if v is not None}}
    if file is None and not data_path and not dataset:
        extra["data"]["dataset"] = "stdlib"
    config = load_config(file, overrides=set_, data=extra)
    try:
        prepared = prepare_dataset(config.data, Layout.from_env().ensure(), model_path=config.model.path,
                                   seed=config.train.seed)
    except DataSourceError as exc:  # missing data, a wrong column: one sentence, no traceback
        raise fail(str(exc)) from None
    splits = prepared.meta["splits"]
    typer.echo(
        f"prepared {prepared.root}\n"
        f"  vocab {prepared.vocab_size}, train {splits['train']['tokens']:,} tokens "
        f"({splits['train']['documents']} documents), val {splits['val']['tokens']:,} tokens "
        f"({splits['val']['documents']} documents)"
    )


@models_app.command("presets")  # issue 17: `cotrain models list` lists the server's trained versions
def list_presets() -> None:
    """Model size presets with their parameter counts."""
    from rich.console import Console
    from rich.table import Table

    from cotrain.config.presets import DEFAULT_SMALL_VOCAB, PRESETS

    table = Table(title="Model presets ([model] type / size)")
    for column in ("type", "size", "parameters", "layers", "hidden", "heads (kv)", "ffn", "vocab", "context"):
        table.add_column(column, justify="right" if column not in ("type", "size") else "left")
    for family, presets in PRESETS.items():
        for p in presets.values():
            vocab = p.vocab_size or DEFAULT_SMALL_VOCAB
            table.add_row(
                family, p.size, _human(p.num_parameters()), str(p.num_layers), str(p.hidden_size),
                f"{p.num_heads} ({p.kv_heads})", str(p.intermediate_size),
                f"{vocab}{'' if p.vocab_size else '*'}", str(p.max_position_embeddings),
            )
    Console(width=140).print(table)
    typer.echo("* small presets take their vocabulary from the tokenizer (default shown).")


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.add_typer(data_app, name="data")
    app.add_typer(models_app, name="models")
