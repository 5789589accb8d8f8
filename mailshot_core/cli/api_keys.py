"""`mailshot api-keys`: the Newsletter API's keys (web/api/keys.py): create (shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mailshot_core.cli.common import app, db_session, err, out
from mailshot_core.web.api.keys import SCOPES, create_key, list_keys, revoke_key

keys_app = typer.Typer(help="API keys of the Newsletter API (/api/v1).", no_args_is_help=True)
app.add_typer(keys_app, name="api-keys")


@keys_app.command("create")
def create(
    name: str,
    scope: Annotated[
        str,
        typer.Option(help=f"What it may do, each including the ones before: {', '.join(SCOPES)}."),
    ] = "read",
) -> None:
    """Create a key; it is printed once, on the last line (only its hash is kept)."""
    with db_session() as session:
        row, key = create_key(session, name, scope)
        err.print(f"API key {row.name!r} created, scope {row.scope}; keep it now, it is not shown again:")
    out.print(key)


@keys_app.command("list")
def list_() -> None:
    """Every key: name, prefix, scope, when created, last used, revoked."""
    table = Table()
    for column in ("name", "prefix", "scope", "created", "last used", "revoked"):
        table.add_column(column, no_wrap=True)
    with db_session() as session:
        for k in list_keys(session):
            table.add_row(
                k.name,
                f"msk_{k.prefix}_…",
                k.scope,
                f"{k.created_at:%Y-%m-%d %H:%M}",
                f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never",
                f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
            )
    out.print(table)


@keys_app.command("revoke")
def revoke(name: str) -> None:
    """Revoke a key: every request with it is refused (401) from now on."""
    with db_session() as session:
        row = revoke_key(session, name)
        out.print(f"API key {row.name!r} revoked")
