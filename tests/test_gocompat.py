"""Go parsing semantics users' annotations and flags rely on."""

import pytest

from webhook.core.gocompat import (
    clean_path,
    csv_first_record,
    join_path,
    parse_bool,
    parse_duration,
    parse_int64,
)


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_parse_bool_accepts_go_true_spellings(text: str) -> None:
    assert parse_bool(text) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_parse_bool_accepts_go_false_spellings(text: str) -> None:
    assert parse_bool(text) is False


@pytest.mark.parametrize("text", ["yes", "no", "on", "tRUE", " true", "", "2"])
def test_parse_bool_rejects_everything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bool(text)


@pytest.mark.parametrize(("text", "value"), [("3600", 3600), ("+7", 7), ("-5", -5), ("007", 7)])
def test_parse_int64_accepts_decimal_with_sign(text: str, value: int) -> None:
    assert parse_int64(text) == value


@pytest.mark.parametrize(
    "text", ["", " 1", "1 ", "1_000", "0x10", "1.5", "9223372036854775808", "٣"]
)
def test_parse_int64_rejects_what_strconv_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_int64(text)


@pytest.mark.parametrize(
    ("text", "record"),
    [
        ("a,b", ["a", "b"]),
        ("a, b", ["a", " b"]),  # leading spaces are kept
        ('"a,b",c', ["a,b", "c"]),
        ('"say ""hi""",x', ['say "hi"', "x"]),
        ("a,b\nc,d", ["a", "b"]),  # first record only
        ("\n\na", ["a"]),  # blank lines are skipped
        ("a,", ["a", ""]),
        ("a\r\nb", ["a"]),
        ("a\r", ["a"]),  # a lone trailing \r before EOF is dropped
        ('"multi\nline",z', ["multi\nline", "z"]),
    ],
)
def test_csv_first_record_follows_encoding_csv(text: str, record: list[str]) -> None:
    assert csv_first_record(text) == record


@pytest.mark.parametrize("text", ["", "\n", 'a"b', '"a"b', '"unterminated'])
def test_csv_errors_and_empty_input_mean_no_record(text: str) -> None:
    assert csv_first_record(text) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("300ms", 0.3),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("-1s", -1.0),
    ],
)
def test_parse_duration_follows_time_parseduration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "1.s.", "1s2"])
def test_parse_duration_rejects_malformed_values(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("parts", "joined"),
    [
        (("/var/run/secrets/", "token"), "/var/run/secrets/token"),
        (("/a//b/", "./c"), "/a/b/c"),
        (("/a/b", "../c"), "/a/c"),
        (("//a", "b"), "/a/b"),
        (("", "token"), "token"),
        (("", ""), ""),
    ],
)
def test_join_path_is_filepath_join(parts: tuple[str, str], joined: str) -> None:
    assert join_path(*parts) == joined


def test_clean_path_of_nothing_is_dot() -> None:
    assert clean_path("") == "."
    assert clean_path("a/..") == "."
