"""Pure validation and normalisation rules shared by every provider."""

from __future__ import annotations

from typing import Any

import pytest

from kiiaren_core.errors import InvalidInputError, PayloadTooLargeError
from kiiaren_core.validation import (
    CHANNEL_NAME_MAX,
    CHANNEL_NAME_MIN,
    JOIN_CODE_ALPHABET,
    JOIN_CODE_LENGTH,
    MAX_MESSAGE_BODY_BYTES,
    MAX_REACTION_LENGTH,
    MAX_TITLE_LENGTH,
    WORKSPACE_NAME_MAX,
    WORKSPACE_NAME_MIN,
    email_domain,
    is_join_code,
    normalize_channel_name,
    normalize_domain,
    normalize_email,
    validate_message_body,
    validate_reaction,
    validate_title,
    validate_workspace_name,
)


def test_constants_match_the_reference() -> None:
    assert (WORKSPACE_NAME_MIN, WORKSPACE_NAME_MAX) == (3, 20)
    assert (CHANNEL_NAME_MIN, CHANNEL_NAME_MAX) == (3, 20)
    assert JOIN_CODE_ALPHABET == "ABCDEFGHJKMNPQRSTUVWXYZ023456789"
    assert len(JOIN_CODE_ALPHABET) == len(set(JOIN_CODE_ALPHABET)) == 32
    assert not set("ILO1") & set(JOIN_CODE_ALPHABET)
    assert JOIN_CODE_LENGTH == 6


# --- workspace names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("abc", "abc"), ("  Analytical  ", "Analytical"), ("x" * 20, "x" * 20), (" a b ", "a b")],
)
def test_valid_workspace_names_are_trimmed(raw: str, expected: str) -> None:
    assert validate_workspace_name(raw) == expected


@pytest.mark.parametrize("raw", ["", "ab", "  ab  ", "   ", "x" * 21, None, 123])
def test_invalid_workspace_names(raw: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_workspace_name(raw)
    assert caught.value.message == "Invalid workspace name."
    assert caught.value.details == {"field": "name"}


# --- channel names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("general", "general"),
        ("General Chat", "general-chat"),
        ("  Team   Updates  ", "team-updates"),  # trimmed, then each whitespace run -> '-'
        ("a\t\n b", "a-b"),
        ("a b", "a-b"),  # 3 characters after normalisation
        ("a    b", "a-b"),
        ("Q3_plans-2026", "q3_plans-2026"),
        ("café", "café"),
        ("x" * 20, "x" * 20),
        ("y" * 10 + "          " + "z" * 9, "y" * 10 + "-" + "z" * 9),  # 29 raw, 20 normalised
    ],
)
def test_channel_names_are_normalised(raw: str, expected: str) -> None:
    assert normalize_channel_name(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "   ",  # the reference turned this into "-"
        "",
        "ab",
        " ab ",
        "x" * 21,
        "hello!",
        "dots.not.allowed",
        "slash/name",
        None,
        42,
    ],
)
def test_invalid_channel_names(raw: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        normalize_channel_name(raw)
    assert caught.value.message == "Invalid channel name."
    assert caught.value.details == {"field": "name"}


# --- domains (reference section 7.2) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("acme.com", "acme.com"),
        ("mail.acme.co.uk", "mail.acme.co.uk"),
        ("ACME.Com", "acme.com"),
        ("www.acme.com", "acme.com"),
        ("  acme.com  ", "acme.com"),
        (" www.acme.com", "acme.com"),  # trimmed first, unlike the reference
        ("WWW.ACME.COM", "acme.com"),
        ("acme.com.", "acme.com"),  # trailing dot of a fully qualified name
        ("www.acme.com.", "acme.com"),
        ("www.www.acme.com", "www.acme.com"),  # only one leading www. is removed
        ("my-company.io", "my-company.io"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_domains_are_normalised(raw: str, expected: str) -> None:
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "localhost",  # single label
        "com",
        "www.com",  # single label once www. is removed
        "192.168.0.1",  # IP address
        "10.0.0.1.",
        "acme.com..",
        "a" * 64 + ".com",  # a label longer than 63
        ".".join(["a" * 60] * 5) + ".com",  # longer than 253 in all
        "-acme.com",
        "acme-.com",
        "acme..com",
        "acme.c",
        "acme.xn--p1ai",
        "user@acme.com",
        "https://acme.com",
        "acme.com/path",
        "ac me.com",
        "",
        "   ",
        None,
    ],
)
def test_invalid_domains_are_refused_with_the_reference_message(raw: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        normalize_domain(raw)
    assert caught.value.message == (
        f'Invalid domain format: "{raw}". Please enter a valid domain like "acme.com".'
    )
    assert caught.value.details == {"field": "domain"}


def test_the_longest_valid_domain_is_accepted() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57]) + ".com"
    assert len(name) == 253
    assert normalize_domain(name) == name
    too_long = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 58]) + ".com"
    assert len(too_long) == 254
    with pytest.raises(InvalidInputError):
        normalize_domain(too_long)


# --- emails ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ada@Example.COM", "example.com"),
        ("  ada@example.com ", "example.com"),
        ("ada+tag@mail.acme.co.uk", "mail.acme.co.uk"),
    ],
)
def test_email_domain(raw: str, expected: str) -> None:
    assert email_domain(raw) == expected


@pytest.mark.parametrize("raw", ["ada", "a@b@c.com", "@acme.com", "ada@", "", "@"])
def test_email_domain_needs_exactly_one_at_with_both_sides(raw: str) -> None:
    assert email_domain(raw) is None


def test_email_domain_is_exact_not_a_parent_domain() -> None:
    assert email_domain("ada@sub.acme.com") == "sub.acme.com"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Ada@Example.com", "ada@example.com"), ("  a.b+c@x.io ", "a.b+c@x.io")],
)
def test_normalize_email(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw", ["ada", "ada@example", "a@b@c.com", "a b@c.com", "", None, "a@" + "x" * 250 + ".com"]
)
def test_invalid_emails(raw: Any) -> None:
    with pytest.raises(InvalidInputError, match="Invalid email address") as caught:
        normalize_email(raw)
    assert caught.value.details == {"field": "email"}


# --- join codes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["ABC234", "abc234", "zzzz99", "023456"])
def test_well_formed_join_codes(value: str) -> None:
    assert is_join_code(value) is True


@pytest.mark.parametrize(
    "value", ["ABC23", "ABC2345", "ABCI23", "ABCL23", "ABCO23", "ABC123", "", 5]
)
def test_malformed_join_codes(value: Any) -> None:
    assert is_join_code(value) is False


# --- message bodies -------------------------------------------------------------------------------


def test_a_message_body_is_kept_as_is() -> None:
    body = ' {"ops":[{"insert":"hi\\n"}]} '
    assert validate_message_body(body) == body


@pytest.mark.parametrize("body", ["", "   ", "\n\t", None])
def test_an_empty_or_blank_body_is_refused(body: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_message_body(body)
    assert type(caught.value) is InvalidInputError
    assert caught.value.message == "Message body cannot be empty."
    assert caught.value.details == {"field": "body"}


def test_the_body_size_limit_counts_utf8_bytes() -> None:
    assert MAX_MESSAGE_BODY_BYTES == 64 * 1024
    assert validate_message_body("x" * MAX_MESSAGE_BODY_BYTES)
    with pytest.raises(PayloadTooLargeError) as caught:
        validate_message_body("x" * (MAX_MESSAGE_BODY_BYTES + 1))
    assert caught.value.details == {"field": "body", "max_bytes": MAX_MESSAGE_BODY_BYTES}
    assert caught.value.http_status == 413
    # 'é' is two bytes: half as many characters reach the limit.
    assert validate_message_body("é" * (MAX_MESSAGE_BODY_BYTES // 2))
    with pytest.raises(PayloadTooLargeError):
        validate_message_body("é" * (MAX_MESSAGE_BODY_BYTES // 2 + 1))


def test_a_custom_body_limit() -> None:
    assert validate_message_body("12345", max_bytes=5) == "12345"
    with pytest.raises(PayloadTooLargeError, match="larger than 5 bytes"):
        validate_message_body("123456", max_bytes=5)


# --- reactions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "👍",
        "❤️",  # with a variation selector
        "👩‍💻",  # ZWJ sequence
        "🏳️‍🌈",
        "👨‍👩‍👧‍👦",
        "🏴󠁧󠁢󠁥󠁮󠁧󠁿",  # subdivision flag (tag characters)
        "🇫🇷",
        "#️⃣",
        "👍🏽",  # skin tone modifier
        ":+1:",
        "x" * MAX_REACTION_LENGTH,
    ],
)
def test_valid_reactions(value: str) -> None:
    assert validate_reaction(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "thumbs up",
        "👍\n",
        "\x00",
        "a\x07b",
        "\u202eevil",  # right-to-left override
        "\u200b",  # zero-width space
        "\u200d",  # a joiner alone is invisible
        "\U000e0067\U000e007f",  # tag characters alone
        "x" * (MAX_REACTION_LENGTH + 1),
        None,
        1,
    ],
)
def test_invalid_reactions(value: Any) -> None:
    with pytest.raises(InvalidInputError, match="Invalid reaction") as caught:
        validate_reaction(value)
    assert caught.value.details == {"field": "value"}


# --- titles ---------------------------------------------------------------------------------------


def test_titles_are_trimmed_and_may_be_empty() -> None:
    assert validate_title("  Roadmap ") == "Roadmap"
    assert validate_title("") == ""
    assert validate_title("t" * MAX_TITLE_LENGTH) == "t" * MAX_TITLE_LENGTH


def test_long_titles_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate_title("t" * (MAX_TITLE_LENGTH + 1), field="name")
    assert caught.value.details == {"field": "name"}
