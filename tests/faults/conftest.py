"""Fixtures of the fault suite, defined in faultkit.py (a uniquely named module the tests import too)."""

from faultkit import api, fault_parse, fault_stack, fault_temporal, receiver, trial, users  # noqa: F401
