"""Helpers shared by the test suite, notebooks and load tests: real users and roles on a Parse Server."""
