"""The README's permission table is the one in code."""

from __future__ import annotations

from cotrain.server.permissions import TABLE_BEGIN, with_permission_table
from tests.conftest import REPO


def test_readme_permission_table_matches_the_code():
    text = (REPO / "README.md").read_text()
    assert TABLE_BEGIN in text, "README has no permission table"
    assert with_permission_table(text) == text, (
        "README's permission table is stale: run `python -m cotrain.server.permissions README.md`")
