"""Signed identifiers (mailshot_core.content.tokens): unsubscribe tokens and VERP return paths."""

from __future__ import annotations

import pytest

from mailshot_core.content.tokens import (
    TRACK,
    UNSUBSCRIBE,
    RecipientRef,
    make_token,
    parse_verp,
    read_token,
    verp_address,
)

KEY = b"test-secret"
REF = RecipientRef(12, 3456)


IDS = (12, 3456)


@pytest.mark.parametrize("ids", [(1, 1), IDS, (10**17, 10**18 - 1), (0, 0), (7,), (1, 2, 3)])
def test_token_round_trip(ids: tuple[int, ...]) -> None:
    """read_token gives back the ids a token was made for."""
    token = make_token(KEY, UNSUBSCRIBE, *ids)
    assert read_token(KEY, token, UNSUBSCRIBE, len(ids)) == ids
    assert token.isascii() and "/" not in token and "+" not in token  # URL-safe


def test_token_is_bound_to_its_purpose_and_arity() -> None:
    """A token made for one purpose (unsubscribe) is refused for another (tracking), or with other ids."""
    token = make_token(KEY, UNSUBSCRIBE, *IDS)
    assert read_token(KEY, token, TRACK) is None
    assert read_token(KEY, make_token(KEY, TRACK, *IDS), TRACK) == IDS
    assert read_token(KEY, token, UNSUBSCRIBE, 1) is None
    assert read_token(KEY, token, UNSUBSCRIBE, 3) is None


def _altered(token: str) -> list[str]:
    body, mac = token.rsplit(".", 1)
    flipped = "A" if mac[5] != "A" else "B"
    return [
        token[:-1],  # truncated
        token[:-5],
        token + "A",  # extended
        token + "\n",  # trailing newline ("$" matches before it)
        " " + token,
        f"{body}.{mac[:5]}{flipped}{mac[6:]}",  # one MAC character changed
        f"13.3456.{mac}",  # another mailshot, same MAC
        f"12.3457.{mac}",  # the next recipient, same MAC
        f"012.3456.{mac}",  # same numbers, other spelling
        f"{body}.",
        f"{body}",
        "",
        "12.3456",
        "x.y.zzzzzzzzzzzzzzzzzzzzzz",
    ]


def test_forged_truncated_altered_tokens_are_refused() -> None:
    """Any change to a token, or a token made up from the ids, reads as None."""
    token = make_token(KEY, UNSUBSCRIBE, *IDS)
    for bad in _altered(token):
        assert read_token(KEY, bad, UNSUBSCRIBE) is None, bad


def test_token_made_with_another_key_is_refused() -> None:
    """A token signed with another secret key reads as None."""
    assert read_token(KEY, make_token(b"other-key", UNSUBSCRIBE, *IDS), UNSUBSCRIBE) is None
    assert read_token(b"other-key", make_token(KEY, UNSUBSCRIBE, *IDS), UNSUBSCRIBE) is None


def test_verp_round_trip() -> None:
    """parse_verp gives back the reference verp_address encoded, with or without angle brackets."""
    address = verp_address(KEY, "bounces@example.org", REF)
    assert address.startswith("bounces+") and address.endswith("@example.org")
    assert parse_verp(KEY, address) == REF
    assert parse_verp(KEY, f"<{address}>") == REF
    assert parse_verp(KEY, f"  {address}\n") == REF


def test_verp_is_case_insensitive() -> None:
    """An MTA that changes the case of the address does not break VERP decoding."""
    address = verp_address(KEY, "Bounces@Example.org", REF)
    assert parse_verp(KEY, address.upper()) == REF
    assert parse_verp(KEY, address.lower()) == REF


def test_verp_base_with_plus() -> None:
    """A bounce address that already has a +tag still decodes (the VERP part is the last one)."""
    address = verp_address(KEY, "bounces+news@example.org", REF)
    assert parse_verp(KEY, address) == REF


def test_forged_or_unsigned_verp_is_refused() -> None:
    """A VERP address with a wrong, missing or other-key signature, or none at all, reads as None."""
    address = verp_address(KEY, "bounces@example.org", REF)
    local, domain = address.split("@")
    sig = local.rsplit(".", 1)[1]
    other_sig = "0" * 12 if sig != "0" * 12 else "1" * 12
    for bad in [
        f"bounces+m12.r3457.{sig}@{domain}",  # another recipient, same signature
        f"bounces+m12.r3456.{other_sig}@{domain}",
        f"bounces+m12.r3456@{domain}",  # unsigned
        f"bounces+m12.r3456.{sig[:-1]}@{domain}",
        "bounces@example.org",
        "bounces+anything@example.org",
        f"{address}@x",
        "",
    ]:
        assert parse_verp(KEY, bad) is None, bad
    assert parse_verp(b"other-key", address) is None


@pytest.mark.parametrize(
    ("mailshot_id", "recipient_id"), [(1, 1), (99_999, 2_147_483_647), (10**9, 10**12), (10**12, 10**15)]
)
def test_verp_local_part_fits_rfc5321(mailshot_id: int, recipient_id: int) -> None:
    """The VERP local part stays within RFC 5321's 64 octets for large ids (with a usual base)."""
    address = verp_address(KEY, "bounces@lists.example.org", RecipientRef(mailshot_id, recipient_id))
    local = address.rsplit("@", 1)[0]
    assert len(local.encode()) <= 64, (len(local), local)
    assert parse_verp(KEY, address) == RecipientRef(mailshot_id, recipient_id)
