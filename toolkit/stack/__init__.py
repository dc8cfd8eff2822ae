"""The local stack of real servers: PostgreSQL, Parse Server, Temporal, the API and a worker."""

from toolkit.stack._process import StackError
from toolkit.stack.manager import PartStatus, down, status, up

__all__ = ["PartStatus", "StackError", "down", "status", "up"]
