"""Transports: how messages leave, one module per way (SMTP relay, each ESP API); base.py is the
interface and the error classification.  Never touches the database (import-linter contract)."""

from __future__ import annotations

from importlib import import_module

from mailshot_core.config import Settings
from mailshot_core.transports.base import ConfigurationError, Transport

# name -> (module, class); imported on demand so that SMTP sending never loads the HTTP clients.
_CLASSES = {
    "smtp": ("smtp", "SmtpTransport"),
    "mailjet": ("mailjet", "MailjetTransport"),
    "sparkpost": ("sparkpost", "SparkPostTransport"),
    "mandrill": ("mandrill", "MandrillTransport"),
    "brevo": ("brevo", "BrevoTransport"),
    "ses": ("ses", "SesTransport"),
}
AVAILABLE = tuple(_CLASSES)


def get_transport(name: str, settings: Settings) -> Transport:
    """The transport a sending asked for, configured from the settings."""
    if name == "smtp":
        from mailshot_core.transports.smtp import SmtpConfig, SmtpTransport

        return SmtpTransport(SmtpConfig.from_settings(settings))
    if name not in _CLASSES:
        raise ConfigurationError(f"unknown transport {name!r} (available: {', '.join(AVAILABLE)})")
    module, cls = _CLASSES[name]
    transport: Transport = getattr(import_module(f"mailshot_core.transports.{module}"), cls)(settings)
    return transport
