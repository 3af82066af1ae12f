"""The Host's schema migrations (Alembic): one revision per schema change, applied in order
when the Host starts."""
