"""What a message is: Jinja2 sandbox rendering (render.py), the MIME bytes and headers (message.py),
HMAC-signed tokens and VERP addresses (tokens.py).

Pure functions of the sending's frozen content and a recipient's variables: no database (an
import-linter contract forbids store/sqlalchemy here), no transport, no settings object.
"""
