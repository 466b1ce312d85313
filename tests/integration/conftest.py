"""Real peers for the integration tests (the PostgreSQL fixtures live in tests/conftest.py)."""
