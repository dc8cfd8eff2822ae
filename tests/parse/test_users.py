from toolkit.parse import ParseClient
from toolkit.parse.users import ParseUser, add_to_org_role


async def test_users_get_sessions_and_org_roles(parse: ParseClient, user: ParseUser, unique: str) -> None:
    assert user.session_token.startswith("r:")
    me = await parse.request("GET", "users/me", session_token=user.session_token)
    assert me["objectId"] == user.object_id
    name = await add_to_org_role(parse, unique, [user.object_id])
    roles = await parse.find(
        "_Role",
        {"name": name, "users": {"__type": "Pointer", "className": "_User", "objectId": user.object_id}},
        master=True,
    )
    assert len(roles) == 1
