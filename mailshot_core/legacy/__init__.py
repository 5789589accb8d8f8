"""Import from SPIP: SPIP-Listes, SPIP-Lettres and SPIP Mailshot + Mailsubscribers.

mapping.py holds the column mappings (data, STYLE §13) and one importer per source; source.py reads
a SPIP MySQL/MariaDB database (table prefix, charsets); target.py writes idempotently into this
database and reports what it could not map.  Imports sending, audience, store; never feedback or web.
"""
