"""Transports: one module per way of handing messages over (see base.py for the interface)."""

from __future__ import annotations

from mailshot_core.config import Settings
from mailshot_core.transports.base import ConfigurationError, Transport

AVAILABLE = ("smtp",)


def get_transport(name: str, settings: Settings) -> Transport:
    """The transport a sending asked for, configured from the settings."""
    if name == "smtp":
        from mailshot_core.transports.smtp import SmtpConfig, SmtpTransport

        return SmtpTransport(SmtpConfig.from_settings(settings))
    raise ConfigurationError(f"unknown transport {name!r} (available: {', '.join(AVAILABLE)})")
