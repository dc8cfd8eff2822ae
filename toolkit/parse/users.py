"""Real Parse users and organization roles: for `toolkit submit`, notebooks, load runs and tests."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from toolkit.parse import ParseClient
from toolkit.parse.acl import org_role_name
from toolkit.parse.errors import ParseError


@dataclass(frozen=True)
class ParseUser:
    object_id: str
    username: str
    session_token: str


async def sign_up(client: ParseClient, username: str | None = None, password: str | None = None) -> ParseUser:
    """Sign up a new user (random name by default) and return its session."""
    username = username or f"user-{secrets.token_hex(6)}"
    password = password or secrets.token_urlsafe(16)
    body = await client.request("POST", "users", json_body={"username": username, "password": password})
    return ParseUser(body["objectId"], username, body["sessionToken"])


async def log_in_or_sign_up(client: ParseClient, username: str, password: str) -> ParseUser:
    try:
        body = await client.request("POST", "login", json_body={"username": username, "password": password})
    except ParseError as exc:
        if exc.code != 101:  # 101 = invalid username/password
            raise
        return await sign_up(client, username, password)
    return ParseUser(body["objectId"], username, body["sessionToken"])


async def add_to_org_role(client: ParseClient, organization_id: str, user_ids: list[str]) -> str:
    """Create ``role:org_<id>`` if needed (master key) and add the users to it. Returns the role name."""
    name = org_role_name(organization_id)
    users = [{"__type": "Pointer", "className": "_User", "objectId": uid} for uid in user_ids]
    existing = await client.find("_Role", {"name": name}, limit=1, master=True)
    if existing:
        await client.update_object(
            "_Role",
            existing[0]["objectId"],
            {"users": {"__op": "AddRelation", "objects": users}},
            master=True,
        )
    else:
        await client.create_object(
            "_Role",
            {"name": name, "ACL": {"*": {"read": True}}, "users": {"__op": "AddRelation", "objects": users}},
            master=True,
        )
    return name
