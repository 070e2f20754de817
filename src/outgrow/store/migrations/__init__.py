"""Alembic migrations of the control-plane store (a package so that it is installed)."""
