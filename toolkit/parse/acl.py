"""Object ACLs: the owner and the organization's role read, nobody else (design §4.2).

No client may write: the server (master key, which bypasses ACLs) writes every object the toolkit
owns, and the class-level permissions refuse client writes too (:mod:`toolkit.parse.schema`). The ACL
is the second lock: an object stays unwritable by its owner even on a class whose permissions were
opened by mistake.
"""

from __future__ import annotations


def org_role_name(organization_id: str) -> str:
    return f"org_{organization_id}"


def batch_acl(user_id: str, organization_id: str | None = None) -> dict[str, dict[str, bool]]:
    """The ACL of a BatchMemoryRequest and of its Memory and error objects: read-only, never public."""
    if not user_id:
        raise ValueError("a batch ACL needs the owner's user id")
    acl = {user_id: {"read": True}}
    if organization_id:
        acl[f"role:{org_role_name(organization_id)}"] = {"read": True}
    return acl
