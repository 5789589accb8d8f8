"""The texts of the pages a visitor or a subscriber sees (subscribe, confirm, preferences), in English
and French, and how a page picks its language.

A page reached through a signed link speaks the subscriber's language, else the list's, else the
browser's (Accept-Language).  The subscribe form's answer never uses what is stored about the address
typed in: it would tell a stranger whether that address is known.
"""

from __future__ import annotations

LANGUAGES = ("en", "fr")  # of these pages
# The languages a subscriber may choose for our messages (the confirmation's default texts exist in each),
# each named in itself.
MESSAGE_LANGUAGES = {"en": "English", "fr": "Français", "es": "Español", "de": "Deutsch", "it": "Italiano"}

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "subscribe_title": "Subscribe",
        "subscribe_intro": "Choose the lists you want to receive. We will send you a message to confirm.",
        "email": "Email address",
        "name": "Name (optional)",
        "language": "Language of our messages",
        "lists": "Lists",
        "website": "Leave this field empty",
        "subscribe_button": "Subscribe",
        "no_open_list": "There is no list open to subscription at the moment.",
        "no_list_chosen": "Choose at least one list.",
        "unknown_list": "The list {list!r} is not open to subscription.",
        "invalid_input": "Please check the form: {detail}.",
        "sent_title": "Check your inbox",
        "sent_text": (
            "If this address can be subscribed, a message is on its way to {email}. "
            "Follow its link to confirm: nothing is sent to you before that."
        ),
        "sent_hint": "Nothing arrived? Look in your spam folder, or try again in a few minutes.",
        "too_many_title": "Too many requests",
        "too_many_text": "Too many subscription requests came from your connection. Please try again later.",
        "refused_title": "Request refused",
        "refused_text": "This form can only be sent from this site's own page.",
        "too_large_title": "Request too large",
        "too_large_text": "This form is much larger than the page sends. Nothing was done.",
        "confirm_title": "Confirm your subscription",
        "confirm_text": "Click the button to confirm the subscription of {email}.",
        "confirm_button": "Confirm my subscription",
        "confirmed_title": "You are subscribed",
        "confirmed_text": "{email} is now subscribed to: {lists}.",
        "already_title": "Already confirmed",
        "already_text": "This subscription is already confirmed: there is nothing left to do.",
        "invalid_title": "This link is invalid or has expired",
        "invalid_text": (
            "The link may have been cut when copied, or it is older than {days} days. "
            "You can ask for a new one from the subscription page."
        ),
        "invalid_preferences_text": (
            "The link may have been cut when copied, or it is older than {days} days. "
            "Open the unsubscribe link of one of our messages again to reach your preferences."
        ),
        "subscribe_again": "Go to the subscription page",
        "preferences_title": "Your lists",
        "preferences_intro": "Choose the lists {email} receives.",
        "preferences_button": "Save my choices",
        "preferences_saved": "Your choices are saved.",
        "preferences_link": "Choose which lists you receive",
        "or_choose": "or choose which lists you receive",
        "state_pending": "waiting for confirmation",
        "state_closed": "closed: you can leave it, not join it again",
    },
    "fr": {
        "subscribe_title": "Inscription",
        "subscribe_intro": "Choisissez les listes que vous voulez recevoir. Nous vous enverrons un message de confirmation.",
        "email": "Adresse e-mail",
        "name": "Nom (facultatif)",
        "language": "Langue de nos messages",
        "lists": "Listes",
        "website": "Laissez ce champ vide",
        "subscribe_button": "M'inscrire",
        "no_open_list": "Aucune liste n'est ouverte aux inscriptions pour le moment.",
        "no_list_chosen": "Choisissez au moins une liste.",
        "unknown_list": "La liste {list!r} n'est pas ouverte aux inscriptions.",
        "invalid_input": "Vérifiez le formulaire : {detail}.",
        "sent_title": "Consultez votre boîte de réception",
        "sent_text": (
            "Si cette adresse peut être inscrite, un message est en route vers {email}. "
            "Suivez son lien pour confirmer : rien ne vous sera envoyé avant."
        ),
        "sent_hint": "Rien reçu ? Regardez dans vos indésirables, ou réessayez dans quelques minutes.",
        "too_many_title": "Trop de demandes",
        "too_many_text": "Trop de demandes d'inscription viennent de votre connexion. Réessayez plus tard.",
        "refused_title": "Demande refusée",
        "refused_text": "Ce formulaire ne peut être envoyé que depuis la page de ce site.",
        "too_large_title": "Demande trop grande",
        "too_large_text": "Ce formulaire est bien plus grand que celui de la page. Rien n'a été fait.",
        "confirm_title": "Confirmez votre inscription",
        "confirm_text": "Cliquez sur le bouton pour confirmer l'inscription de {email}.",
        "confirm_button": "Confirmer mon inscription",
        "confirmed_title": "Vous êtes inscrit",
        "confirmed_text": "{email} est maintenant inscrit à : {lists}.",
        "already_title": "Déjà confirmée",
        "already_text": "Cette inscription est déjà confirmée : il n'y a plus rien à faire.",
        "invalid_title": "Ce lien n'est pas valide ou a expiré",
        "invalid_text": (
            "Le lien a peut-être été coupé lors d'un copier-coller, ou il a plus de {days} jours. "
            "Vous pouvez en demander un nouveau depuis la page d'inscription."
        ),
        "invalid_preferences_text": (
            "Le lien a peut-être été coupé lors d'un copier-coller, ou il a plus de {days} jours. "
            "Ouvrez à nouveau le lien de désinscription d'un de nos messages pour retrouver vos préférences."
        ),
        "subscribe_again": "Aller à la page d'inscription",
        "preferences_title": "Vos listes",
        "preferences_intro": "Choisissez les listes que reçoit {email}.",
        "preferences_button": "Enregistrer mes choix",
        "preferences_saved": "Vos choix sont enregistrés.",
        "preferences_link": "Choisir les listes que vous recevez",
        "or_choose": "ou choisissez les listes que vous recevez",
        "state_pending": "en attente de confirmation",
        "state_closed": "fermée : vous pouvez la quitter, pas la rejoindre à nouveau",
    },
}
assert all(TEXTS[lang].keys() == TEXTS["en"].keys() for lang in LANGUAGES), "every language has every text"


def _accepted(header: str) -> list[str]:
    """The languages of an Accept-Language header, preferred first (RFC 9110 §12.5.4 q-values)."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(header.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and quality > 0:
            ranked.append((-quality, position, tag))
    return [tag for _, _, tag in sorted(ranked)]


def pick(*candidates: str, accept_language: str = "") -> str:
    """The first of ``candidates`` (language codes, possibly empty) we have texts for, else the
    browser's preferred one we have, else English."""
    for lang in (*candidates, *_accepted(accept_language)):
        base = lang.strip().lower().replace("_", "-").split("-")[0]
        if base in LANGUAGES:
            return base
    return "en"


def texts(lang: str) -> dict[str, str]:
    return TEXTS[lang]
