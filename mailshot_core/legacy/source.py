"""Reading a SPIP site's MySQL/MariaDB database: tables, columns, text decoded to ``str``.

SPIP sites hold text in three ways (original §8.1): utf8/utf8mb4 columns, latin1 columns that
actually hold ISO-8859-15 bytes (€ Œ œ: a utf8mb4 connection would turn them into ¤ ¼ ½), and
BLOB columns (``texte longblob``) holding whatever the site wrote, UTF-8 or ISO-8859-15.  So every
text column is read as raw bytes (``CAST(col AS BINARY)``) and decoded here by its declared
character set: latin1 -> ISO-8859-15; utf8* -> UTF-8; binary -> UTF-8 when valid, else
ISO-8859-15.  Zero dates ('0000-00-00 00:00:00', SPIP's "no date") become None; naive SPIP dates
are taken as UTC.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from mailshot_core.errors import InvalidInput, MailshotError
from mailshot_core.store.models import as_utc

_TEXT_TYPES = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}
_BINARY_TYPES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}


def masked(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparsable URL>"


def open_source(url: str) -> Engine:
    """An engine on the legacy database (PyMySQL); InvalidInput / MailshotError say what is wrong."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise InvalidInput("--url: not an SQLAlchemy URL (e.g. mysql://user:password@host/spip)") from None
    if parsed.get_backend_name() not in ("mysql", "mariadb"):
        raise InvalidInput(f"--url: a SPIP site's MySQL/MariaDB database is expected, got {parsed.drivername!r}")
    parsed = parsed.set(drivername="mysql+pymysql")
    # Raw bytes are decoded column by column (see the module doc), so the connection charset only
    # matters for identifiers and numbers; utf8mb4 avoids any server-side conversion surprise.
    parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    engine = create_engine(parsed, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        raise MailshotError(f"cannot connect to the legacy database {masked(url)}: {exc.orig}") from None
    return engine


def decode(raw: bytes | str | None, charset: str | None) -> str:
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if charset and charset.startswith("latin1"):
        return raw.decode("iso-8859-15")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("iso-8859-15")


def as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return as_utc(value)
    return None  # zero dates come back as strings, NULL as None


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str
    charset: str | None


class LegacyDatabase:
    """Tables of one SPIP site, with the configurable prefix (``spip_`` by default)."""

    def __init__(self, conn: Connection, prefix: str = "spip_") -> None:
        self.conn = conn
        self.prefix = prefix
        self._columns: dict[str, dict[str, Column]] = {}
        rows = conn.execute(
            text(
                "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, ORDINAL_POSITION"
            )
        ).all()
        for table, column, data_type, charset in rows:
            name = str(table)
            if name.startswith(prefix):
                cols = self._columns.setdefault(name[len(prefix) :], {})
                cols[str(column)] = Column(str(column), str(data_type).lower(), charset)

    def has(self, table: str) -> bool:
        return table in self._columns

    def columns(self, table: str) -> dict[str, Column]:
        return self._columns.get(table, {})

    def rows(
        self, table: str, columns: Sequence[str], where: str = "", params: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The rows of ``prefix+table`` with text decoded; a column the table lacks reads as None.

        Key columns (``id_*``, SPIP's convention) must exist: without them rows cannot be matched,
        and the table is not the plugin's.
        """
        known = self.columns(table)
        if not known:
            raise MailshotError(f"table {self.prefix}{table} does not exist in the legacy database")
        missing = [name for name in columns if name.startswith("id_") and name not in known]
        if missing:
            raise MailshotError(
                f"table {self.prefix}{table} has no column {', '.join(missing)}: not the expected plugin schema"
            )
        selected = []
        for name in columns:
            col = known.get(name)
            if col is None:
                selected.append(f"NULL AS `{name}`")
            elif col.data_type in _TEXT_TYPES:
                selected.append(f"CAST(`{name}` AS BINARY) AS `{name}`")
            else:
                selected.append(f"`{name}`")
        sql = f"SELECT {', '.join(selected)} FROM `{self.prefix}{table}`" + (f" WHERE {where}" if where else "")
        try:
            result = self.conn.execute(text(sql), params or {})
        except SQLAlchemyError as exc:
            raise MailshotError(f"reading {self.prefix}{table}: {getattr(exc, 'orig', exc)}") from None
        for row in result.mappings():
            out: dict[str, Any] = {}
            for name in columns:
                value = row[name]
                col = known.get(name)
                if col is not None and (col.data_type in _TEXT_TYPES or col.data_type in _BINARY_TYPES):
                    value = decode(value, col.charset)
                out[name] = value
            yield out
