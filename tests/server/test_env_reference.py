"""One place documents every environment variable: the settings classes. The README's variable
tables are generated from them, and no machine setting is mistaken for a config override."""

from __future__ import annotations

import re
from collections import Counter

from cotrain.chain.settings import ChainKeySettings, ChainSettings
from cotrain.config.env_settings import EngineSettings
from cotrain.config.loader import env_key_to_path
from cotrain.db import DatabaseSettings
from cotrain.server.env_reference import TABLES, begin_marker, documented_variables, with_env_tables
from cotrain.server.settings import TRACKING_ENV_PREFIX, LimitSettings, QuotaSettings, Settings
from tests.conftest import REPO

SETTINGS_CLASSES = (Settings, DatabaseSettings, LimitSettings, QuotaSettings, ChainSettings, ChainKeySettings,
                    EngineSettings)
# the command-line client's own variables (README, "From the terminal and from Python"), not a server's
CLIENT_VARIABLES = {"COTRAIN_SERVER", "COTRAIN_TOKEN"}
VARIABLE_LITERAL = re.compile(r"[\"'](COTRAIN_[A-Z0-9_]*[A-Z0-9]|DATABASE_URL|REDIS_URL|APTOS_[A-Z0-9_]+)[\"']")


def test_readme_variable_tables_match_the_code():
    text = (REPO / "README.md").read_text()
    for table in TABLES:
        assert begin_marker(table) in text, f"README has no {table} variable table"
    assert with_env_tables(text) == text, (
        "README's variable tables are stale: run `python -m cotrain.server.env_reference README.md`")


def test_every_settings_variable_is_documented_once_with_a_meaning():
    documented = documented_variables()
    assert not [name for name, count in Counter(documented).items() if count > 1]
    declared = {name for cls in SETTINGS_CLASSES for name in cls.variables()}
    assert declared - set(documented) == set()
    for cls in SETTINGS_CLASSES:
        assert all(field.description for field in cls.variables().values()), cls.__name__


def test_machine_settings_are_not_read_as_config_overrides():
    """`COTRAIN_<SECTION>_<KEY>` sets a config key; a setting of the machine must not look like one
    (COTRAIN_TRACKING_* are both, on purpose: the server's default and `cotrain train`'s override)."""
    clashes = {name: env_key_to_path(name) for name in documented_variables()
               if not name.startswith(TRACKING_ENV_PREFIX) and env_key_to_path(name) is not None}
    assert clashes == {}


def test_every_variable_the_code_reads_is_documented():
    """A new `os.environ.get("COTRAIN_X")` anywhere in src/ needs a documented field first."""
    used = {match.group(1): path.relative_to(REPO) for path in (REPO / "src" / "cotrain").rglob("*.py")
            for match in VARIABLE_LITERAL.finditer(path.read_text())}
    undocumented = {name: str(path) for name, path in used.items()
                    if name not in set(documented_variables()) | CLIENT_VARIABLES and env_key_to_path(name) is None}
    assert undocumented == {}, "declare these in a settings class (cotrain/*/settings.py) with a description"
