"""Object ACLs: the owner reads and writes, the organization's role reads, nobody else (design §4.2)."""

from __future__ import annotations


def org_role_name(organization_id: str) -> str:
    return f"org_{organization_id}"


def batch_acl(user_id: str, organization_id: str | None = None) -> dict[str, dict[str, bool]]:
    """The ACL of a BatchMemoryRequest and of its Memory objects. Never public."""
    if not user_id:
        raise ValueError("a batch ACL needs the owner's user id")
    acl = {user_id: {"read": True, "write": True}}
    if organization_id:
        acl[f"role:{org_role_name(organization_id)}"] = {"read": True}
    return acl
