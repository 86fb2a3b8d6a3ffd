"""``POST /auth``'s body, ``registry.AuthConfig``: typed like the other bodies. Its
fields are plain strings (never ``Text``): a refusal must not quote a credential."""

from __future__ import annotations

from typing import Any

from api.models.gojson import WireModel, decode
from engine.errors import InvalidParameter


class AuthConfigIn(WireModel):
    GO_NAME = "AuthConfig"

    # Go's JSON names for these are lower case
    username: str = ""
    password: str = ""
    auth: str = ""
    email: str = ""
    serveraddress: str = ""
    identitytoken: str = ""
    registrytoken: str = ""


def check_auth_body(data: Any) -> dict[str, Any]:
    """The body, checked (the engine reads it as sent)."""
    if data is None:
        raise InvalidParameter("invalid JSON: expected an object with the credentials")
    decode(AuthConfigIn, data, "registry.AuthConfig")
    return dict(data)
