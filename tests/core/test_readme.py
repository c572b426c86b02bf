"""The README stays true: its config reference is the schema's, its commands exist."""

from __future__ import annotations

from cotrain.config.reference import with_reference
from tests.conftest import REPO


def test_readme_config_reference_matches_the_schema():
    text = (REPO / "README.md").read_text()
    assert with_reference(text) == text, "README is stale: run `python -m cotrain.config.reference README.md`"


def test_readme_first_screen_gives_the_two_commands():
    first_screen = "\n".join((REPO / "README.md").read_text().splitlines()[:20])
    assert "make run" in first_screen and "make test" in first_screen
