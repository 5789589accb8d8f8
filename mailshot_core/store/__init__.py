"""The mailshot database: SQLModel tables (models.py), engines and transactions (db.py), Alembic
migrations (migrations/, applied by every entry point through ``get_engine``).

Owns the schema and how to open it; no business rule.  Imports only config/errors.
"""
