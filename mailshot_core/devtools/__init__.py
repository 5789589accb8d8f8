"""Tools for the demo and the tests, shipped so `make demo` works from an install: the dev relay
(relay.py, a local aiosmtpd SMTP server with fault injection).  Never used by a production path;
imports nothing of the domain.
"""
