"""Who is calling: bearer tokens checked against their configured SHA-256 hashes, and roles.

Tokens are hashed on arrival and compared in constant time with every
configured hash; a token is never kept, logged or echoed, only the name and
role of the configured token it matches. ``admin`` may do everything.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from fastapi import Request

from rollbackd.api.errors import Unauthorized
from rollbackd.config import ROLES, Config
from rollbackd.errors import NotPermitted
from rollbackd.incidents import Caller

ANY_ROLE = ROLES


class Auth:
    """Authentication and role checks against the tokens of the running config."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self.config = config

    def caller(self, request: Request) -> Caller | None:
        """The configured token the request's bearer token hashes to, or None."""
        return self.caller_of(request.headers.get("authorization", ""))

    def caller_of(self, header: str) -> Caller | None:
        """The configured token an ``Authorization`` header's bearer token hashes to, or None."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode("utf-8", errors="replace")).hexdigest()
        found: Caller | None = None
        for configured in self.config().tokens:  # every one, so the time says nothing
            if hmac.compare_digest(digest, configured.sha256):
                found = Caller(configured.name, configured.role)
        return found

    def requires(self, *roles: str) -> Callable[[Request], Caller]:
        """A check (a FastAPI dependency) that the caller has one of ``roles``, or admin."""

        def check(request: Request) -> Caller:
            caller = self.caller(request)
            if caller is None:
                missing = not request.headers.get("authorization")
                raise Unauthorized("a bearer token is required" if missing else "unknown token")
            if not permits(caller, roles):
                raise NotPermitted(
                    f"this needs the role {' or '.join(roles)}; the token {caller.name!r} has "
                    f"{caller.role}"
                )
            return caller

        return check


def permits(caller: Caller, roles: tuple[str, ...]) -> bool:
    """Whether ``caller`` has one of ``roles``; ``admin`` may do everything."""
    return caller.role in roles or caller.role == "admin"
