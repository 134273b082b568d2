"""API keys and scopes (docs/api.md, Authentication)."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from core.ledger.errors import KassaError

# Which scopes may do what: admin everything, write transactions and reads, read GETs.
ALLOWED = {
    "admin": frozenset({"admin", "write", "read"}),
    "write": frozenset({"write", "read"}),
    "read": frozenset({"read"}),
}


class Unauthorized(KassaError):
    code = "unauthorized"


class Forbidden(KassaError):
    code = "forbidden"


class ApiKeys:
    """The keys every request is checked against; `replace` swaps them for the next request
    (KASSA_API_KEYS_FILE read again: server/process/key_reload.py)."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = keys

    @property
    def keys(self) -> dict[str, str]:
        return dict(self._keys)

    def replace(self, keys: dict[str, str]) -> None:
        self._keys = dict(keys)

    def scope_of(self, key: str) -> str | None:
        for known, scope in self._keys.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                return scope
        return None

    def require(self, request: Request, needed: str) -> str:
        """The caller's API key if it has the `needed` scope; raises 401/403 otherwise."""
        return self.require_header(request.headers.get("authorization", ""), needed)

    def require_header(self, header: str, needed: str) -> str:
        """As `require`, from the Authorization header's value."""
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("send Authorization: Bearer <api key>")
        scope = self.scope_of(key.strip())
        if scope is None:
            raise Unauthorized("unknown API key")
        if needed not in ALLOWED[scope]:
            raise Forbidden(f"this API key has scope {scope!r}; {needed!r} is needed")
        return key.strip()
