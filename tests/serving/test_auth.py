"""Bearer-token check: off when unset, 401 on anything but the exact key."""

from __future__ import annotations

import pytest

from serving.auth import api_key_digest_from_env, check_authorization
from serving.errors import Unauthorized


def test_auth_is_off_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENREEL_API_KEY", raising=False)
    digest = api_key_digest_from_env()
    assert digest is None
    check_authorization(None, digest)  # no exception


def test_blank_key_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENREEL_API_KEY", "  ")
    assert api_key_digest_from_env() is None


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "s3cret"],
)
def test_wrong_or_missing_tokens_are_rejected(
    monkeypatch: pytest.MonkeyPatch, header: str | None
) -> None:
    monkeypatch.setenv("TOKENREEL_API_KEY", "s3cret")
    with pytest.raises(Unauthorized):
        check_authorization(header, api_key_digest_from_env())


def test_the_key_is_accepted_and_never_kept_in_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENREEL_API_KEY", "s3cret")
    digest = api_key_digest_from_env()
    assert digest is not None and "s3cret" not in digest
    check_authorization("Bearer s3cret", digest)
    check_authorization("bearer   s3cret", digest)
