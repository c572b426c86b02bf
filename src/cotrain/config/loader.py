"""Reading a config: TOML file, then `COTRAIN_<SECTION>_<KEY>` environment overrides, then
`--set section.key=value` overrides, then validation with errors a person can act on."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cotrain.config.schema import CotrainConfig, CrossFieldError, default_session_id


class ConfigError(Exception):
    """A config that cannot be used. `problems` holds one human sentence per problem."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "invalid config:\n" + "\n".join(f"  - {p}" for p in problems))


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    data: dict[str, Any] | None = None,
) -> CotrainConfig:
    """Load and validate a config. `data` (a parsed TOML dict) may be given instead of `path`."""
    source = str(path) if path is not None else None
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(Path(path))
    if data is not None:
        raw = deep_merge(raw, data)
    raw = apply_env_overrides(raw, os.environ if environ is None else environ)
    raw = apply_set_overrides(raw, overrides, source)
    config = validate_config(raw, source)
    if config.session.id is None and path is not None:
        config.session.id = default_session_id(Path(path).stem)
    return config


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([f"no such file: {path} (give the path of a .toml config)"], str(path))
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None


def validate_config(raw: Mapping[str, Any], source: str | None = None) -> CotrainConfig:
    try:
        return CotrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc), source) from None


def describe_validation_error(exc: ValidationError, model: type[BaseModel] = CotrainConfig) -> list[str]:
    """One line per problem: the key path, the bad value, and what is allowed."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        cross = (err.get("ctx") or {}).get("error")
        if isinstance(cross, CrossFieldError):
            lines.extend(f"{p} = {_show(v)}: must be {allowed}" for p, v, allowed in cross.problems)
            continue
        loc = [str(part) for part in err["loc"]]
        path = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{path} = {_show(err['input'])}: unknown key{_suggest(model, loc)}")
        elif err["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{path} = {_show(err['input'])}: {msg[0].lower() + msg[1:]}")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{...}"
    return repr(value)


def _suggest(model: type[BaseModel], loc: list[str]) -> str:
    """'; did you mean "x"?' plus the allowed keys of the section the unknown key sits in."""
    section: type[BaseModel] = model
    for part in loc[:-1]:
        field = section.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        section = annotation
    allowed = list(section.model_fields)
    close = difflib.get_close_matches(loc[-1], allowed, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    where = f"[{'.'.join(loc[:-1])}]" if len(loc) > 1 else "the top level"
    return f"{hint} (allowed in {where}: {', '.join(allowed)})"


def parse_value(text: str) -> Any:
    """A TOML literal (`3e-4`, `true`, `[1, 2]`, `"x"`), or the text itself as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError([f"{dotted}: {part} is a value, not a section"])
        node = child
    node[parts[-1]] = value


def apply_set_overrides(raw: dict[str, Any], overrides: Iterable[str], source: str | None = None) -> dict[str, Any]:
    raw = deep_merge({}, raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or "." not in key:
            raise ConfigError([f'--set {item!r}: write it as section.key=value, e.g. train.learning_rate=3e-4'], source)
        set_dotted(raw, key.strip(), parse_value(value.strip()))
    return raw


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """`COTRAIN_TRAIN_LEARNING_RATE=3e-4` sets train.learning_rate; nested sections too
    (`COTRAIN_DISTRIBUTED_DILOCO_INNER_STEPS`). Other COTRAIN_* variables (COTRAIN_HOME, ...) are
    left alone: they are settings of the machine (`cotrain.config.env_settings`).

    These are not a pydantic-settings class on purpose: `_` both separates the section from the
    key and joins the words of a name (`train` + `learning_rate`), so a fixed nested delimiter
    cannot split them; the schema's sections decide (`env_key_to_path`). The variables and their
    meaning are the config reference's keys, so they need no documentation of their own."""
    raw = deep_merge({}, raw)
    for name, value in sorted(environ.items()):
        dotted = env_key_to_path(name)
        if dotted is not None:
            set_dotted(raw, dotted, parse_value(value))
    return raw


# COTRAIN_* variables that look like `<section>_<key>` but are settings of the machine, not config
# keys (COTRAIN_DATA_ROOTS: the data roots of cotrain.data_roots, not data.roots); a test checks
# that no other documented setting looks like a config key
NOT_CONFIG_KEYS = frozenset({"COTRAIN_DATA_ROOTS"})


def env_key_to_path(name: str) -> str | None:
    """The dotted config key `COTRAIN_<SECTION>_<KEY>` sets, or None for another variable."""
    if not name.startswith("COTRAIN_") or name in NOT_CONFIG_KEYS:
        return None
    rest = name[len("COTRAIN_") :].lower()
    section: type[BaseModel] = CotrainConfig
    path: list[str] = []
    while (found := _subsection_prefixing(section, rest)) is not None:
        field, section = found
        path.append(field)
        rest = rest[len(field) + 1 :]
        if rest in section.model_fields:
            return ".".join([*path, rest])
    if path and rest:
        return ".".join([*path, rest])  # unknown key: validation names it
    return None


def _subsection_prefixing(section: type[BaseModel], rest: str) -> tuple[str, type[BaseModel]] | None:
    """The first subsection of `section` whose name and an underscore begin `rest`."""
    for field, info in section.model_fields.items():
        annotation = info.annotation
        if rest.startswith(field + "_") and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return field, annotation
    return None


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        elif isinstance(value, Mapping):
            merged[key] = deep_merge({}, value)
        else:
            merged[key] = value
    return merged
