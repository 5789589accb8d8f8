"""What every message of one sending shares: compiled templates, envelope, signed links.

Built once per process and settings (:func:`context_for`): a sending's content is frozen at creation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from mailshot_core.audience.lists import get_list
from mailshot_core.config import Settings
from mailshot_core.content.message import Envelope, MessageBuilder, OutgoingMessage
from mailshot_core.content.render import CompiledMailshot, Personalisation
from mailshot_core.content.tokens import TRACK, UNSUBSCRIBE, make_token
from mailshot_core.sending import claims, sendings, tracked_links
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Mailshot


@dataclass(frozen=True)
class SendContext:
    """What every message of one sending shares: compiled templates, envelope, links."""

    mailshot_id: int
    builder: MessageBuilder
    base_url: str
    secret_key: bytes
    track: bool  # the HTML carries our open pixel and click redirects (tracking.py)

    @classmethod
    def build(
        cls, mailshot: Mailshot, settings: Settings, list_title: str, links: Mapping[str, int] | None = None
    ) -> SendContext:
        """``links``: the sending's tracked links (tracked_links.links_for) when it is tracked."""
        assert mailshot.id is not None
        key = settings.secret_key.get_secret_value().encode()
        first_list = sendings.list_identifiers(mailshot)[0]
        domain = settings.list_domain
        title = list_title.replace("\\", "").replace('"', "")
        envelope = Envelope(
            mailshot_id=mailshot.id,
            from_name=mailshot.from_name,
            from_email=mailshot.from_email or settings.from_email,
            list_id=f'"{title}" <{first_list}.{domain}>',
            domain=domain,
            secret_key=key,
            reply_to=settings.reply_to,
            bounce_address=settings.bounce_address,
            unsubscribe_mailto=settings.unsubscribe_mailto,
        )
        compiled = CompiledMailshot(mailshot.subject, mailshot.html, mailshot.text, links)
        return cls(
            mailshot_id=mailshot.id,
            builder=MessageBuilder(envelope, compiled),
            base_url=settings.base_url,
            secret_key=key,
            track=links is not None,
        )

    def personalise(
        self,
        recipient_id: int,
        subscriber_id: int | None,
        email: str,
        nom: str = "",
        listes: tuple[str, ...] = (),
        lang: str = "",
        status: str = "valid",
    ) -> Personalisation:
        """The recipient's variables, with their signed links (tokens.py).

        The unsubscribe link names the subscriber (0: an address that is none), so it keeps working
        after the sending's details are purged; the tracking links name the recipient row.
        """
        unsubscribe = (
            f"{self.base_url}/u/{make_token(self.secret_key, UNSUBSCRIBE, self.mailshot_id, subscriber_id or 0)}"
        )
        if not self.track:
            return Personalisation(email, nom, listes, lang, status, unsubscribe)
        track = make_token(self.secret_key, TRACK, self.mailshot_id, recipient_id)
        opened, clicked = f"{self.base_url}/o/{track}", f"{self.base_url}/c/{track}"
        return Personalisation(email, nom, listes, lang, status, unsubscribe, opened, clicked)

    def personalise_claimed(self, rcpt: claims.ClaimedRecipient) -> Personalisation:
        return self.personalise(rcpt.id, rcpt.subscriber_id, rcpt.email, rcpt.nom, rcpt.listes, rcpt.lang, rcpt.status)

    def message_for(
        self, recipient_id: int, email: str, who: Personalisation, *, test: bool = False
    ) -> OutgoingMessage:
        return self.builder.build(recipient_id, email, who, test=test)


_contexts: dict[tuple[str, int, str], SendContext] = {}


def context_for(engine: Engine, settings: Settings, mailshot_id: int) -> SendContext:
    """The sending's context, built once per process and settings (its content is frozen at creation)."""
    # SecretStr dumps as '****': the key's own bytes stand for it, so a changed key is seen.
    key = (
        engine.url.render_as_string(),
        mailshot_id,
        settings.model_dump_json() + settings.secret_key.get_secret_value(),
    )
    ctx = _contexts.get(key)
    if ctx is None:
        with session_scope(engine) as session:
            mailshot = sendings.get(session, mailshot_id)
            title = get_list(session, sendings.list_identifiers(mailshot)[0]).title
            links = tracked_links.links_for(session, mailshot) if mailshot.track else None
            ctx = SendContext.build(mailshot, settings, title, links)
        if len(_contexts) > 16:
            _contexts.clear()
        _contexts[key] = ctx
    return ctx
