"""``Orderflow-Signature``: what ``sign`` makes, ``verify`` accepts; everything else is refused,
and the digest is compared by ``hmac.compare_digest`` alone (proven by substitution, not timed)."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from nodeapp.core.signing import SIGNATURE_HEADER, TOLERANCE, BadSignature, sign, verify

SECRET = b"s3cret-for-tests"
BODY = b'{"payment_id":"p","order_id":"o","status":"approved","amount":"1.00"}'
NOW = 1_700_000_000.0


def test_sign_then_verify_agree() -> None:
    header = sign(SECRET, BODY, now=NOW)
    verify(SECRET, BODY, header, now=NOW)
    verify(SECRET, BODY, sign(SECRET, BODY))  # at the real current time too


def test_the_header_is_the_documented_scheme() -> None:
    header = sign(SECRET, BODY, now=NOW)
    expected = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert SIGNATURE_HEADER == "Orderflow-Signature"


@pytest.mark.parametrize(
    ("body", "secret"),
    [(BODY + b" ", SECRET), (BODY.replace(b"approved", b"declined"), SECRET), (BODY, b"other")],
    ids=["body-appended", "body-changed", "wrong-secret"],
)
def test_tampered_body_or_wrong_secret_is_refused(body: bytes, secret: bytes) -> None:
    header = sign(SECRET, BODY, now=NOW)
    with pytest.raises(BadSignature, match="does not match"):
        verify(secret, body, header, now=NOW)


@pytest.mark.parametrize("offset", [-(TOLERANCE + 1), TOLERANCE + 1, -600.0, 3600.0])
def test_timestamps_too_old_or_in_the_future_are_refused(offset: float) -> None:
    header = sign(SECRET, BODY, now=NOW + offset)
    with pytest.raises(BadSignature, match="away from now"):
        verify(SECRET, BODY, header, now=NOW)


@pytest.mark.parametrize("offset", [-(TOLERANCE - 1), TOLERANCE - 1])
def test_timestamps_within_tolerance_are_accepted(offset: float) -> None:
    verify(SECRET, BODY, sign(SECRET, BODY, now=NOW + offset), now=NOW)


def test_a_replay_of_a_signed_request_expires() -> None:
    header = sign(SECRET, BODY, now=NOW)
    verify(SECRET, BODY, header, now=NOW + 299)
    with pytest.raises(BadSignature):
        verify(SECRET, BODY, header, now=NOW + 301)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "t=1700000000",
        "v1=abc",
        "t=soon,v1=abc",
        "t=1700000000,v1",
        "t=1700000000;v1=abc",
        "t=1700000000,v0=" + "0" * 64,
    ],
)
def test_malformed_or_missing_headers_are_refused(header: str | None) -> None:
    with pytest.raises(BadSignature):
        verify(SECRET, BODY, header, now=NOW)


def test_any_of_several_v1_values_may_match() -> None:
    good = sign(SECRET, BODY, now=NOW).split(",")[1]
    verify(SECRET, BODY, f"t=1700000000,v1={'0' * 64},{good}", now=NOW)


def test_errors_never_carry_the_secret_or_the_expected_digest() -> None:
    expected = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    with pytest.raises(BadSignature) as caught:
        verify(SECRET, BODY, f"t=1700000000,v1={'0' * 64}", now=NOW)
    message = str(caught.value)
    assert SECRET.decode() not in message
    assert expected not in message


def test_verify_decides_only_through_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace ``hmac.compare_digest`` as ``signing`` sees it: every candidate goes through it,
    and its answer alone decides; a plain ``==`` anywhere would show here."""
    calls: list[tuple[str, str]] = []

    def always_equal(a: str, b: str) -> bool:
        calls.append((a, b))
        return True

    monkeypatch.setattr("nodeapp.core.signing.hmac.compare_digest", always_equal)
    forged = f"t=1700000000,v1={'0' * 64}"
    verify(SECRET, BODY, forged, now=NOW)  # accepted: the substitute said "equal"
    expected = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert calls == [(expected, "0" * 64)]

    def never_equal(a: str, b: str) -> bool:
        calls.append((a, b))
        return False

    monkeypatch.setattr("nodeapp.core.signing.hmac.compare_digest", never_equal)
    with pytest.raises(BadSignature):  # refused: even the right digest needs its say-so
        verify(SECRET, BODY, sign(SECRET, BODY, now=NOW), now=NOW)
    assert calls[-1] == (expected, expected)


def test_current_time_is_used_by_default() -> None:
    stale = sign(SECRET, BODY, now=time.time() - 600)
    with pytest.raises(BadSignature):
        verify(SECRET, BODY, stale)
