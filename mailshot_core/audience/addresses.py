"""One person's fields as they are stored: the address (normalised, validated), the name, the language.

Apart from subscribers.py so that lists.py (a list's sender address) and subscribers.py share the same
rules without importing each other.
"""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from mailshot_core.content.message import HeaderError, check_header_value
from mailshot_core.errors import InvalidInput
from mailshot_core.store.models import Subscriber, max_length

# The columns these values are stored in: checked on input, so that a long value is a clear error (a bad
# row of an import, by line) on SQLite as on PostgreSQL, and never reaches a header whole.
NAME_LENGTH = max_length(Subscriber, "nom")
LANG_LENGTH = max_length(Subscriber, "lang")
EMAIL_LENGTH = max_length(Subscriber, "email")


def normalise_email(raw: str) -> str:
    """The canonical form of an address, or InvalidInput saying why it is not one."""
    value = raw.strip()
    if not value:
        raise InvalidInput("empty address")
    try:
        # allow_smtputf8=False: message.py and the SMTP transport send plain-ASCII envelopes and headers, so
        # an address with non-ASCII before the "@" would be imported and then never be sendable.
        result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidInput(f"invalid address {value[:EMAIL_LENGTH]!r}: {exc}") from None
    # An internationalised domain is stored in its ASCII (IDNA) form, which SMTP and headers accept.
    return (result.ascii_email or result.normalized).lower()


def check_name(nom: str) -> str:
    if "\x00" in nom:  # PostgreSQL cannot store it: refused here, as a bad row, not as a database error
        raise InvalidInput(f"name {nom[:40]!r} contains a NUL character")
    try:
        return check_header_value("name", nom.strip(), NAME_LENGTH)
    except HeaderError as exc:
        raise InvalidInput(str(exc)) from None


def check_lang(lang: str) -> str:
    lang = lang.strip()
    if len(lang) > LANG_LENGTH or not lang.isprintable():
        raise InvalidInput(f"lang {lang[:40]!r}: not a language code (at most {LANG_LENGTH} printable characters)")
    return lang
