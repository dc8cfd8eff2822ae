"""Fixtures of the payload tests (driver, cleanup): see tests/fixtures/stored_payloads.py."""

from tests.fixtures.stored_payloads import driver, payload_worker, storing_client, task_queue  # noqa: F401
