"""User-facing errors of the domain: each message is one clear line saying what and where."""

from __future__ import annotations


class MailshotError(Exception):
    """Base of the errors the CLI prints as ``error: <message>`` (exit code 1)."""


class NotFound(MailshotError):
    """An id, list or address that does not exist."""


class InvalidInput(MailshotError):
    """Input refused before anything was changed."""


class AlreadyExists(InvalidInput):
    """A name given to a new thing is taken (a list, an API key): the API's 409."""


class InvalidState(MailshotError):
    """The operation does not apply to the object in its current status."""
