"""Dockerfile word expansion: BuildKit's shell-lexer semantics (engine.builder.shellwords)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.builder.shellwords import ShellWordsError, expand_word, expand_words, is_space
from engine.errors import InvalidParameter

ENV = {
    "A": "a",
    "PWD": "/home",
    "SPACED": "x  y",
    "LEADING": "  ab c",
    "EMPTY": "",
    "PATHV": "/usr/local/bin/tool.tar.gz",
    "KOREAN": "한국어",
    "_under9": "u",
    "1": "one",
}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        # plain text and variables
        ("hello", "hello"),
        ("$A", "a"),
        ("${A}", "a"),
        ("pre${A}post", "preapost"),
        ("$A$A", "aa"),
        ("he$PWD", "he/home"),
        ("$PWD/x", "/home/x"),
        ("$_under9", "u"),
        ("${KOREAN}!", "한국어!"),
        ("$UNSET", ""),
        ("x${UNSET}y", "xy"),
        ("$A.b", "a.b"),
        # a $ without a name stays literal
        ("$", "$"),
        ("a$", "a$"),
        ("$.", "$."),
        ("he$.x", "he$.x"),
        ("cost $ 5", "cost $ 5"),
        # digits and special parameters are names of their own (never set in a build)
        ("he$1x", "heonex"),
        ("$12", ""),
        ("a$@b", "ab"),
        ("$$", ""),
        ("$#x", "x"),
        # escapes
        ("\\$A", "$A"),
        ("he\\\\$PWD", "he\\/home"),
        ("\\${A}", "${A}"),
        ("a\\ b", "a b"),
        ("abc\\tdef", "abctdef"),
        ("hello\\", "hello"),
        ("hello\\\\", "hello\\"),
        ("he\\'llo", "he'llo"),
        # single quotes: everything literal
        ("'$A'", "$A"),
        ("he'll'o", "hello"),
        ("'abc\\tdef'", "abc\\tdef"),
        ("'hello\\'", "hello\\"),
        ("'\"x\"'", '"x"'),
        # double quotes: $ expands; only $ " and the escape can be escaped
        ('"$A"', "a"),
        ('"${A} b"', "a b"),
        ('"\\$A"', "$A"),
        ('"a\\"b"', 'a"b'),
        ('"a\\\\b"', "a\\b"),
        ('"abc\\tdef"', "abc\\tdef"),
        ("\"hel'lo\"", "hel'lo"),
        ("\"''\"", "''"),
        ('x""y', "xy"),
        ('"$SPACED"', "x  y"),
        ("$SPACED", "x  y"),
        # ${X-w} ${X:-w}: default when unset (colon: or empty)
        ("${UNSET:-def}", "def"),
        ("${EMPTY:-def}", "def"),
        ("${A:-def}", "a"),
        ("${UNSET-def}", "def"),
        ("${EMPTY-def}", ""),
        ("he${XXX:-$PWD}xx", "he/homexx"),
        ("he${XXX:-${YYY:-yyy}}xx", "heyyyxx"),
        ('${UNSET:-"a b"}', "a b"),
        ("${UNSET:-'$A'}", "$A"),
        ("${UNSET:-a\\}b}", "a}b"),
        # ${X+w} ${X:+w}: alternative when set (colon: and non-empty)
        ("${A:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${A+$PWD}", "/home"),
        # ${X?w} ${X:?w} pass the value through when it is there
        ("${A?}", "a"),
        ("${A:?msg}", "a"),
        ("${EMPTY?msg}", ""),
        # prefix and suffix removal, shortest and longest
        ("${PATHV#*/}", "usr/local/bin/tool.tar.gz"),
        ("${PATHV##*/}", "tool.tar.gz"),
        ("${PATHV%.*}", "/usr/local/bin/tool.tar"),
        ("${PATHV%%.*}", "/usr/local/bin/tool"),
        ("${PATHV#/usr}", "/local/bin/tool.tar.gz"),
        ("${PATHV%.gz}", "/usr/local/bin/tool.tar"),
        ("${PATHV#nomatch}", "/usr/local/bin/tool.tar.gz"),
        ("${PATHV#/us?}", "/local/bin/tool.tar.gz"),
        ("${UNSET#x}", ""),
        ("${PWD#\\/}", "home"),
        # replacement, first and all
        ("${PATHV/o/0}", "/usr/l0cal/bin/tool.tar.gz"),
        ("${PATHV//o/0}", "/usr/l0cal/bin/t00l.tar.gz"),
        ("${PATHV/*bin\\//}", "tool.tar.gz"),
        ("${PATHV//./_}", "/usr/local/bin/tool_tar_gz"),
        ("${PWD/nomatch/x}", "/home"),
        ("${PWD/h/\\1}", "/\\1ome"),
        # } outside ${...} is literal
        ("${A}}", "a}"),
        ("}", "}"),
    ],
)
def test_expand_word(word: str, expected: str) -> None:
    assert expand_word(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("`$A", "$A"),
        ("C:\\dir\\$A", "C:\\dir\\a"),
        ('"a`"b"', 'a"b'),
        ('"a\\"', "a\\"),
        ("x``", "x`"),
        ("${UNSET:-a`}b}", "a}b"),
    ],
)
def test_expand_word_with_backtick_escape(word: str, expected: str) -> None:
    assert expand_word(word, ENV, escape="`") == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("hello", ["hello"]),
        ("hello there     ", ["hello", "there"]),
        ("  a\tb\nc  ", ["a", "b", "c"]),
        ("", []),
        ("   ", []),
        # expansions are split, quoted text is not
        ("hello${SPACED}bye", ["hellox", "ybye"]),
        ('hello"${SPACED}"bye', ["hellox  ybye"]),
        ('hello "${SPACED}"bye', ["hello", "x  ybye"]),
        ("hello${LEADING}def", ["hello", "ab", "cdef"]),
        ('hello"${LEADING}" def', ["hello  ab c", "def"]),
        ('${UNSET:-"q q"}', ["q", "q"]),
        # escapes keep a blank inside a field
        ("hello\\ there", ["hello there"]),
        ('hello\\" there', ['hello"', "there"]),
        ("a' 'b c", ["a b", "c"]),
        # a field of nothing but quotes vanishes, as in BuildKit
        ('""', []),
        ("a '' b", ["a", "b"]),
        ('x""y', ["xy"]),
        ("$UNSET", []),
        ("a $UNSET b", ["a", "b"]),
        ("src1 $A/src2 /dest/", ["src1", "a/src2", "/dest/"]),
    ],
)
def test_expand_words(word: str, expected: list[str]) -> None:
    assert expand_words(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "reason"),
    [
        ("he'llo", "unexpected end of statement while looking for matching single-quote"),
        ("he\\\\'llo", "unexpected end of statement while looking for matching single-quote"),
        ('"hello', "unexpected end of statement while looking for matching double-quote"),
        ('"hello\\"', "unexpected end of statement while looking for matching double-quote"),
        ("${", "syntax error: missing '}'"),
        ("${A", "syntax error: missing '}'"),
        ("${A:", "syntax error: missing '}'"),
        ("${A:-x", "syntax error: missing '}'"),
        ("${A:-${B}", "syntax error: missing '}'"),
        ("${A:-'x}", "syntax error: missing '}'"),
        ("${A/x", "syntax error: missing '/' in ${}"),
        ("${A/x/y", "syntax error: missing '}'"),
        ("${}", "syntax error: bad substitution"),
        ("he${}xx", "syntax error: bad substitution"),
        ("${:}", "syntax error: bad substitution"),
        ("${{A}}", "syntax error: bad substitution"),
        ("he${.}", "unsupported modifier (.) in substitution"),
        ("${ A}", "unsupported modifier ( ) in substitution"),
        ("${A:x}", "unsupported modifier (:x) in substitution"),
        ("${A:/x/y}", "unsupported modifier (:/) in substitution"),
        ("${UNSET?}", "UNSET: is not allowed to be unset"),
        ("${UNSET:?}", "UNSET: is not allowed to be unset"),
        ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
        ("${UNSET?need $A}", "UNSET: need a"),
        ("${EMPTY:?must be set}", "EMPTY: must be set"),
        ("${A#\\x}", "invalid pattern (\\x) in substitution: invalid escape '\\x'"),
        ("${A%\\}", "syntax error: missing '}'"),
    ],
)
def test_expand_word_errors(word: str, reason: str) -> None:
    with pytest.raises(ShellWordsError) as caught:
        expand_word(word, ENV)
    assert caught.value.reason == reason
    assert caught.value.word == word
    assert str(caught.value).startswith("failed to process ")
    assert str(caught.value).endswith(": " + reason)
    # expand_words shares the lexer, so it fails the same way
    with pytest.raises(ShellWordsError):
        expand_words(word, ENV)


def test_error_is_invalid_parameter_and_quotes_the_word() -> None:
    with pytest.raises(InvalidParameter) as caught:
        expand_word('say "hi', {})
    assert str(caught.value) == (
        'failed to process "say \\"hi": '
        "unexpected end of statement while looking for matching double-quote"
    )


def test_env_is_not_modified_and_lookup_is_case_sensitive() -> None:
    env = {"Name": "v"}
    assert expand_word("$Name/$NAME/$name", env) == "v//"
    assert env == {"Name": "v"}


@pytest.mark.parametrize(
    ("ch", "expected"),
    [(" ", True), ("\t", True), ("\n", True), ("\u00a0", True), ("\u3000", True),
     ("\x1c", False), ("\x1f", False), ("a", False), ("", False)],
)
def test_is_space_follows_go(ch: str, expected: bool) -> None:
    assert is_space(ch) is expected


# Text without $, quotes, escapes or blanks passes through untouched, as one field.
_PLAIN = st.text(
    alphabet=st.characters(blacklist_characters="$'\"\\`", blacklist_categories=("Cs",)),
    max_size=40,
).filter(lambda text: not any(is_space(ch) for ch in text))


@given(_PLAIN)
def test_plain_text_is_unchanged(text: str) -> None:
    assert expand_word(text, ENV) == text
    assert expand_words(text, ENV) == ([text] if text else [])


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_single_quoted_text_is_literal(text: str) -> None:
    quoted = "'" + text.replace("'", "") + "'"
    assert expand_word(quoted, ENV) == text.replace("'", "")


@given(st.text(max_size=30))
def test_never_raises_anything_but_shellwords_error(text: str) -> None:
    try:
        expand_words(text, ENV)
    except ShellWordsError:
        pass
