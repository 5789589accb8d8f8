"""The README documents every setting the code reads."""

from __future__ import annotations

from conftest import REPO
from mailshot_core.config import Settings


def test_every_setting_is_in_the_readme_table() -> None:
    """Each MAILSHOT_* variable of config.Settings has a row in the README's configuration table."""
    readme = (REPO / "README.md").read_text()
    missing = [f"MAILSHOT_{n.upper()}" for n in Settings.model_fields if f"| `MAILSHOT_{n.upper()}` |" not in readme]
    assert missing == []


def test_every_module_is_in_the_architecture_layout() -> None:
    """docs/ARCHITECTURE.md's layout names every module of mailshot_core and flows/, so the map stays the tree."""
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    layout = doc[doc.index("## Layout") : doc.index("## Data model")]
    modules = [
        p
        for package in ("mailshot_core", "flows")
        for p in (REPO / package).rglob("*.py")
        if p.name != "__init__.py" and "migrations" not in p.parts
    ]
    missing = [str(p.relative_to(REPO)) for p in modules if p.name not in layout]
    assert missing == []
    folders = {p.parent.name for p in modules if p.parent.name != "mailshot_core"} - {"flows"}
    assert [f for f in sorted(folders) if f"{f}/" not in layout] == []
