""".dockerignore parsing and matching (moby/patternmatcher + ignorefile semantics)."""

from __future__ import annotations

import pytest

from engine.builder.ignore import IgnoreRules, clean_path, read_patterns
from engine.errors import InvalidParameter


# ------------------------------------------------------------------ parsing
def test_read_patterns_like_ignorefile() -> None:
    text = (
        "\ufeff# a comment\n"
        "\n"
        "   \n"
        "  spaced.txt  \n"
        " #not-a-comment\n"
        "/abs/path\n"
        "./dot/../cleaned//x/\n"
        "! negated \n"
        "!/abs-neg\n"
        "/\n"
    )
    assert read_patterns(text) == [
        "spaced.txt", "#not-a-comment", "abs/path", "cleaned/x", "!negated", "!abs-neg", "/",
    ]


def test_bom_only_stripped_on_first_line() -> None:
    assert read_patterns("\ufeffa\n\ufeffb") == ["a", "\ufeffb"]


@pytest.mark.parametrize(("path", "cleaned"), [
    ("", "."), (".", "."), ("a/./b/", "a/b"), ("a/../..", ".."), ("/../x", "/x"),
    ("//a//b", "/a/b"), ("../a/../../b", "../../b"),
])
def test_clean_path_is_go_path_clean(path: str, cleaned: str) -> None:
    assert clean_path(path) == cleaned


def test_bad_patterns_are_invalid_parameter() -> None:
    with pytest.raises(InvalidParameter, match="illegal exclusion pattern"):
        IgnoreRules.parse("!\n")
    with pytest.raises(InvalidParameter, match="syntax error in pattern"):
        IgnoreRules.parse("[abc\n")


# ------------------------------------------------------------------ the Docker docs table
DOCS_TABLE = [
    # pattern text, path, excluded?
    ("*/temp*", "somedir/temporary.txt", True),
    ("*/temp*", "somedir/temp", True),
    ("*/temp*", "somedir/temp/inner.txt", True),  # the directory takes its children
    ("*/temp*", "temporary.txt", False),
    ("*/temp*", "a/b/temp", False),
    ("*/*/temp*", "somedir/subdir/temporary.txt", True),
    ("*/*/temp*", "somedir/temporary.txt", False),
    ("temp?", "tempa", True),
    ("temp?", "tempb", True),
    ("temp?", "temp", False),
    ("temp?", "tempab", False),
    ("temp?", "dir/tempa", False),
    ("**/*.go", "main.go", True),
    ("**/*.go", "a/b/c/x.go", True),
    ("**/*.go", "a/b/c/x.gox", False),
    ("*.md\n!README*.md\nREADME-secret.md", "CHANGES.md", True),
    ("*.md\n!README*.md\nREADME-secret.md", "README.md", False),
    ("*.md\n!README*.md\nREADME-secret.md", "README-public.md", False),
    ("*.md\n!README*.md\nREADME-secret.md", "README-secret.md", True),
    ("*.md\nREADME-secret.md\n!README*.md", "README-secret.md", False),
    ("*.md\nREADME-secret.md\n!README*.md", "CHANGES.md", True),
]


@pytest.mark.parametrize(("patterns", "path", "excluded"), DOCS_TABLE)
def test_docker_docs_examples(patterns: str, path: str, excluded: bool) -> None:
    assert IgnoreRules.parse(patterns).excludes(path) is excluded


# ------------------------------------------------------------------ more semantics
SEMANTICS = [
    ("node_modules", "node_modules/x/y.js", True),  # parent dir matched
    ("node_modules", "src/node_modules", False),  # anchored at the root
    ("**/node_modules", "src/node_modules/a", True),
    ("a/**", "a/b/c", True),
    ("a/**", "a", False),  # "a/**" needs something below a
    ("a/**/b", "a/b", True),  # ** matches zero directories
    ("a/**/b", "a/x/y/b", True),
    ("/abs", "abs", True),  # leading / is the context root
    ("*", "anything/deep", True),
    ("*.txt\n!keep.txt", "keep.txt", False),
    ("*.txt\n!keep.txt", "drop.txt", True),
    ("dir\n!dir/keep", "dir/keep", False),  # an exception naming a path inside
    ("dir\n!dir/keep", "dir/other", True),
    ("dir\n!dir/keep", "dir", True),
    ("dir\n!*/keep", "dir/keep", True),  # exception not under "dir/": the dir is skipped
    ("a.b", "axb", False),  # "." is literal
    ("a[0-9]", "a5", True),
    ("a[^0-9]", "a5", False),
    ("a[^0-9]", "ax", True),
    ("f\\*", "f*", True),
    ("f\\*", "fx", False),
    ("(x)", "(x)", True),
    ("x+", "x+", True),
    ("x+", "xx", False),
    ("ab$", "ab$", True),
]


@pytest.mark.parametrize(("patterns", "path", "excluded"), SEMANTICS)
def test_matching_semantics(patterns: str, path: str, excluded: bool) -> None:
    assert IgnoreRules.parse(patterns).excludes(path) is excluded


def test_last_match_wins_and_reinclusion_of_directory_children() -> None:
    rules = IgnoreRules.parse("docs\n!docs/keep/**\ndocs/keep/secret")
    assert rules.excludes("docs/a.md")
    assert not rules.excludes("docs/keep/x")
    assert rules.excludes("docs/keep/secret")
    assert not rules.skips_dir("docs")  # an exception starts inside it


def test_matches_is_matches_or_parent_matches() -> None:
    rules = IgnoreRules.parse("dir\n!*/keep")
    # patternmatcher alone re-includes it; the walker never goes into "dir" though.
    assert rules.matches("dir/keep") is False
    assert rules.excludes("dir/keep") is True


def test_empty_rules_exclude_nothing() -> None:
    rules = IgnoreRules.parse("# only a comment\n\n")
    assert not rules
    assert not rules.excludes("anything")
