"""Settings read from environment variables, with pydantic-settings.

Every variable is one field of an `EnvSettings` class, declared with `env_field`: its name is the
field's alias and its description is its documentation, from which the README's variable tables
are generated (`cotrain.server.env_reference`). A bad value is refused with one sentence per
problem that names the variable, never a traceback: a validator raises `ValueError` with its own
sentence, and pydantic's type errors are turned into one here.

This module also holds the variables the engine process reads itself (`EngineSettings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

from pydantic import BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonDict
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

FALSE_WORDS = ("0", "false", "no", "off")  # any other value of an on/off variable means on
TRUE_WORDS = ("1", "true", "yes", "on")  # ... of a flag that is off unless set to one of these


class EnvSettingsError(ValueError):
    """A variable holds a value that cannot be used; the message is one sentence per problem."""


def env_field(name: str, default: Any = None, doc: str = "", *, shown: str | None = None, secret: bool = False,
              **kwargs: Any) -> Any:
    """A field read from the variable `name`, documented by `doc`. A callable `default` is a factory
    (`list`). `shown` is the default as the README states it, where the value itself is not helpful
    (computed, or a secret). `secret`: the variable is a key, a token or a credential, which a
    training run never inherits (`EnvSettings.secret_variables`)."""
    extra: JsonDict = {"shown_default": shown} if shown is not None else {}
    if secret:
        extra["secret"] = True
    if callable(default):
        return Field(default_factory=default, validation_alias=name, description=doc, json_schema_extra=extra or None,
                     **kwargs)
    return Field(default, validation_alias=name, description=doc, json_schema_extra=extra or None, **kwargs)


def on_unless_false_word(value: Any) -> Any:
    """An on/off variable that is on unless it says otherwise (`COTRAIN_START_DHT=0`)."""
    return value.strip().lower() not in FALSE_WORDS if isinstance(value, str) else value


def on_if_true_word(value: Any) -> Any:
    """A flag that is off unless it says `1`, `true`, `yes` or `on`."""
    return value.strip().lower() in TRUE_WORDS if isinstance(value, str) else value


def comma_list(value: Any) -> Any:
    """`a, b,,c` → ["a", "b", "c"] (blanks dropped)."""
    return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


OnUnlessOff = Annotated[bool, BeforeValidator(on_unless_false_word)]
Flag = Annotated[bool, BeforeValidator(on_if_true_word)]
CommaList = Annotated[list[str], NoDecode, BeforeValidator(comma_list)]


class EnvSettings(BaseSettings):
    """Base of every settings class: exact variable names, an empty variable counts as unset,
    fields may also be given by name (tests, composition), bad values are one sentence."""

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore",
                                      validate_by_name=True, validate_by_alias=True)
    error: ClassVar[type[ValueError]] = EnvSettingsError

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise self.error(describe_settings_error(type(self), exc)) from None

    @classmethod
    def from_env(cls) -> Self:
        """The settings this process's environment sets (the same as calling the class)."""
        return cls()

    @classmethod
    def from_mapping(cls, environ: Mapping[str, str]) -> Self:
        """The settings `environ` sets (a run's environment, a test's), none from this process's: every
        field is given, from `environ` or its default, so no variable of this process is read."""
        values = {}
        for name, field in cls.model_fields.items():
            value = environ.get(field.validation_alias) if isinstance(field.validation_alias, str) else None
            values[name] = value if value else field.get_default(call_default_factory=True)
        return cls(**values)

    @classmethod
    def secret_variables(cls) -> set[str]:
        """The variables of this class and its bases declared `secret` (keys, tokens, credentials)."""
        return {field.validation_alias for field in cls.model_fields.values()
                if isinstance(field.validation_alias, str) and isinstance(field.json_schema_extra, dict)
                and field.json_schema_extra.get("secret") is True}

    @classmethod
    def variables(cls) -> dict[str, FieldInfo]:
        """Variable name → field, for the fields this class declares itself (not its bases')."""
        inherited = {name for base in cls.__mro__[1:] for name in getattr(base, "model_fields", {})}
        return {field.validation_alias: field for name, field in cls.model_fields.items()
                if name not in inherited and isinstance(field.validation_alias, str)}


_KINDS = {"int_parsing": "a whole number", "int_from_float": "a whole number", "float_parsing": "a number",
          "bool_parsing": "on or off (1 or 0)"}


def describe_settings_error(settings: type[BaseSettings], exc: ValidationError) -> str:
    """One sentence per problem: a validator's own sentence, else the variable, its value, what it
    must be and a value to set."""
    sentences: list[str] = []
    for err in exc.errors(include_url=False):
        own = (err.get("ctx") or {}).get("error")
        if isinstance(own, ValueError):
            sentences.append(str(own))
            continue
        field = _field_of(settings, str(err["loc"][0])) if err["loc"] else None
        alias = field.validation_alias if field is not None else None
        name = alias if isinstance(alias, str) else ".".join(str(part) for part in err["loc"])
        kind = _KINDS.get(err["type"]) or err["msg"][0].lower() + err["msg"][1:]
        example = f"set it to e.g. {field.default}" if field is not None and field.default is not None else "fix it"
        sentences.append(f"{name}={err['input']!r} is not {kind}; {example} or unset it.")
    return " ".join(sentences)


def _field_of(settings: type[BaseSettings], name_or_alias: str) -> FieldInfo | None:
    """The field an error's location names: by field name (init) or by variable (environment)."""
    fields = settings.model_fields
    return fields.get(name_or_alias) or next(
        (field for field in fields.values() if field.validation_alias == name_or_alias), None)


class EngineSettings(EnvSettings):
    """Variables the engine process (`cotrain train`, a run the executor starts) reads on its machine.
    `core/path_guard.py` and `core/metrics.py` read them where they are used; they are declared here
    so that one place documents every variable."""

    enforce_data_roots: Flag = env_field(
        "COTRAIN_ENFORCE_DATA_ROOTS", False,
        "set by the executor on every run: the run's paths must lie inside this machine's data roots; "
        "a `cotrain train CONFIG` you type yourself is not checked", shown="unset")
    allow_any_data_path: Flag = env_field(
        "COTRAIN_ALLOW_ANY_DATA_PATH", False, "`1`: this worker runs any path (its operator's choice)",
        shown="unset")
    peak_flops: float | None = env_field(
        "COTRAIN_PEAK_FLOPS", None, "the device's peak FLOP/s for the MFU figure (e.g. `312e12`)",
        shown="data sheet, else measured")
