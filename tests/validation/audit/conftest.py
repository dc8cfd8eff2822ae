"""Fixtures of the audit tests: a worker for workflows that are not the toolkit's (tests/fixtures)."""

from tests.fixtures.echo_worker import echo_task_queue, echo_worker  # noqa: F401
