"""The Newsletter API (``/api/v1``): SPIP's contract over HTTP for sites and apps (lists, subscribers,
sendings, one-off messages, feedback), with bearer API keys, RFC 9457 problems and idempotent creates.

A FastAPI sub-application mounted by web/app.py; it calls the same domain functions as the CLI and
the pages (audience/, sending/, feedback/), never copies their rules.
"""
