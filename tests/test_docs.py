"""The README documents every setting the code reads."""

from __future__ import annotations

from conftest import REPO
from mailshot_core.config import Settings


def test_every_setting_is_in_the_readme_table() -> None:
    """Each MAILSHOT_* variable of config.Settings has a row in the README's configuration table."""
    readme = (REPO / "README.md").read_text()
    missing = [f"MAILSHOT_{n.upper()}" for n in Settings.model_fields if f"| `MAILSHOT_{n.upper()}` |" not in readme]
    assert missing == []
