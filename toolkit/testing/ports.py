"""A free TCP port on the loopback interface, for servers a test starts on its own."""

from toolkit.ports import free_port

__all__ = ["free_port"]
