"""Optional bearer-token authentication.

The key comes from the environment variable `TOKENREEL_API_KEY` of the process that builds the
application (`tokenreel serve`, `serve run`, or the Serve controller of a RayService whose pod
gets the variable from a Kubernetes Secret). Decision: only its SHA-256 digest travels to the
HTTP replicas (as a constructor argument), so the key itself is never pickled, stored in Serve's
config, or logged. A presented token is hashed the same way and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from serving.errors import Unauthorized

API_KEY_ENV = "TOKENREEL_API_KEY"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def api_key_digest_from_env(env_var: str = API_KEY_ENV) -> str | None:
    """The digest of the configured key, or None when authentication is off (unset or empty)."""
    key = os.environ.get(env_var, "").strip()
    return _digest(key) if key else None


def check_authorization(header: str | None, key_digest: str | None) -> None:
    """Raise `Unauthorized` unless auth is off or `header` is `Bearer <the key>`."""
    if key_digest is None:
        return
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing bearer token (Authorization: Bearer <API key>)")
    # Comparing digests of equal length keeps the comparison constant-time in the key's length too.
    if not hmac.compare_digest(_digest(token), key_digest):
        raise Unauthorized("invalid API key")
