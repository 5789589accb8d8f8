"""The web app (FastAPI, `mailshot web`): the public links of every message (links.py), ESP
webhooks (webhooks.py, auth.py) and the follow-up pages under /admin/ (pages.py, login.py, views.py,
templating.py, templates/).

HTTP at the edge: reads requests, calls feedback/ and sending/, renders; FastAPI types never leave
this package.  Imports every domain below it; nothing imports it but the CLI.
"""
