"""The double opt-in message's texts: its template variables, the default texts per language, and
the check of a list's own template (audience/lists.py refuses a bad one when it is set)."""

from __future__ import annotations

from mailshot_core.content.render import TemplateError, TextTemplate
from mailshot_core.errors import InvalidInput

# The variables of a confirmation template (with the sample values its check renders).
VARIABLES = {
    "email": "someone@example.org",
    "nom": "Someone",
    "lists": "Weekly news",
    "url_confirm": "https://news.example.org/confirm/1.2.sig",
    "days": "7",
}

# Default texts: the languages of the sites Mailshot comes from first.  {{ lists }} are the lists' titles.
DEFAULTS: dict[str, tuple[str, str]] = {
    "en": (
        "Please confirm your subscription to {{ lists }}",
        "Hello{% if nom %} {{ nom }}{% endif %},\n\n"
        "Someone, hopefully you, asked to subscribe {{ email }} to {{ lists }}.\n\n"
        "To confirm, follow this link (it works for {{ days }} days):\n{{ url_confirm }}\n\n"
        "If you did not ask for it, ignore this message: you will not be subscribed and will receive "
        "nothing more.\n",
    ),
    "fr": (
        "Confirmez votre inscription à {{ lists }}",
        "Bonjour{% if nom %} {{ nom }}{% endif %},\n\n"
        "Quelqu'un, sans doute vous, a demandé l'inscription de {{ email }} à {{ lists }}.\n\n"
        "Pour la confirmer, suivez ce lien (valable {{ days }} jours) :\n{{ url_confirm }}\n\n"
        "Si vous n'avez rien demandé, ignorez ce message : vous ne serez pas inscrit et ne recevrez "
        "plus rien.\n",
    ),
    "es": (
        "Confirme su suscripción a {{ lists }}",
        "Hola{% if nom %} {{ nom }}{% endif %}:\n\n"
        "Alguien, seguramente usted, pidió suscribir {{ email }} a {{ lists }}.\n\n"
        "Para confirmarlo, siga este enlace (válido {{ days }} días):\n{{ url_confirm }}\n\n"
        "Si no lo pidió, ignore este mensaje: no quedará suscrito y no recibirá nada más.\n",
    ),
    "de": (
        "Bitte bestätigen Sie Ihr Abonnement von {{ lists }}",
        "Hallo{% if nom %} {{ nom }}{% endif %},\n\n"
        "Jemand, hoffentlich Sie, hat das Abonnement von {{ lists }} für {{ email }} angefordert.\n\n"
        "Zur Bestätigung folgen Sie diesem Link ({{ days }} Tage gültig):\n{{ url_confirm }}\n\n"
        "Falls Sie das nicht waren, ignorieren Sie diese Nachricht: Sie werden nicht eingetragen und "
        "erhalten nichts weiter.\n",
    ),
    "it": (
        "Conferma la tua iscrizione a {{ lists }}",
        "Ciao{% if nom %} {{ nom }}{% endif %},\n\n"
        "Qualcuno, probabilmente tu, ha chiesto di iscrivere {{ email }} a {{ lists }}.\n\n"
        "Per confermare, segui questo link (valido {{ days }} giorni):\n{{ url_confirm }}\n\n"
        "Se non l'hai chiesto tu, ignora questo messaggio: non sarai iscritto e non riceverai altro.\n",
    ),
}


def check_template(subject: str | None, text: str | None) -> None:
    """A list's own confirmation template, refused at once when it cannot render (InvalidInput)."""
    try:
        if subject is not None:
            TextTemplate(subject, "confirmation subject", VARIABLES)
        if text is not None:
            TextTemplate(text, "confirmation text", VARIABLES)
            if "url_confirm" not in text:
                raise InvalidInput("confirmation text: it must contain {{ url_confirm }}, the link to confirm")
    except TemplateError as exc:
        raise InvalidInput(str(exc)) from None


def language(*candidates: str) -> str:
    for lang in candidates:
        base = lang.strip().lower().replace("_", "-").split("-")[0]
        if base in DEFAULTS:
            return base
    return "en"
