"""The batch memory HTTP API (FastAPI)."""
