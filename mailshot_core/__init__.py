"""Mailshot's domain library: everything but the orchestration, which is flows/' (it never imports prefect).

One sub-package per domain, each importing only from the layers below it (pyproject.toml's
import-linter contracts, drawn in docs/ARCHITECTURE.md):

    cli/                         the `mailshot` command (the top: running/sendings may reach flows/)
    web/  devtools/              HTTP (public links, webhooks, pages); the dev relay
    feedback/  legacy/           what comes back (events, bounces, tracking, MAX_FAIL); SPIP import
    sending/                     a sending's life: status, claims, pace, pipeline, dispatch, archive
    transports/  audience/       how messages leave; who receives them
    content/                     rendering, MIME, signed tokens (no database)
    store/                       tables, engines, migrations
    config.py  duration.py  errors.py
"""
