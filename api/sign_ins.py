"""Sign-ins with an OIDC provider's tokens, recorded before the request they open goes on.

The provider signs users in, not Watchfloor: the first request a token makes here is the
sign-in, and :func:`services.oidc.record_sign_in` records it once (the database decides
"first", so several API processes still write one entry). Each process remembers the
tokens it has recorded, so later requests cost no database round trip.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from services import audit
from services.oidc import OidcSignIn, record_sign_in

__all__ = ["OidcSignIns"]

#: Tokens remembered per process; past this the oldest are forgotten (and asked about again,
#: which records nothing: the database already holds them).
REMEMBERED = 10_000


class OidcSignIns:
    """Records each OIDC token's first use; thread-safe (sync routes run in a thread pool)."""

    def __init__(self, database_url: str, *, audit_key: bytes | None) -> None:
        self._database_url = database_url
        self._audit_key = audit_key  # the record extends the keyed audit chain
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, sign_in: OidcSignIn) -> None:
        """Record ``sign_in`` if it is the token's first use; committed before this returns,
        so that no request with a provider's token is served without its record."""
        with self._lock:
            if sign_in.token_sha256 in self._seen:
                self._seen.move_to_end(sign_in.token_sha256)
                return
        # A connection of its own, not the pool's: the request may already hold a pooled one,
        # and a burst of first requests must not wait on each other for the pool. Once per token.
        with audit.connect(self._database_url, key=self._audit_key) as conn:
            record_sign_in(conn, sign_in)
            conn.commit()
        with self._lock:
            self._seen[sign_in.token_sha256] = None
            while len(self._seen) > REMEMBERED:
                self._seen.popitem(last=False)
