"""Alembic migrations of afmon's database (`afmon db upgrade`; docs/scale.md)."""
