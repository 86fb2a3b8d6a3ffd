"""The Dockerfile parser (engine.builder.dockerfile): dockerd/BuildKit rules and error texts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.builder.dockerfile import (
    ArgCommand,
    CmdCommand,
    Command,
    CopyCommand,
    Dockerfile,
    DockerfileParseError,
    EntrypointCommand,
    EnvCommand,
    ExposeCommand,
    HealthcheckCommand,
    LabelCommand,
    MaintainerCommand,
    OnbuildCommand,
    RunCommand,
    ShellCommand,
    Stage,
    StopSignalCommand,
    UserCommand,
    VolumeCommand,
    WorkdirCommand,
    parse,
    parse_go_duration,
    parse_instruction,
)
from engine.errors import InvalidParameter

SEED = """\
FROM busybox
LABEL maintainer="zy@gmail.com" version="1.0" description="this is description"
RUN echo a > /a && echo b > /b
WORKDIR /test
WORKDIR demo
ADD hello.php /
ADD test.tar.gz /
ENV MYSQL_VERSION 5.6
RUN echo "${MYSQL_VERSION}" > /v
VOLUME /var/lib/mysql
EXPOSE 27017
ENTRYPOINT ["/bin/echo"]
CMD ["hello docker"]
"""


def only_stage(text: str) -> Stage:
    dockerfile = parse(text)
    assert len(dockerfile.stages) == 1
    return dockerfile.stages[0]


def one(text: str) -> Command:
    """The single instruction after a FROM line."""
    commands = only_stage("FROM scratch\n" + text).commands
    assert len(commands) == 1
    return commands[0]


def parse_error(text: str | bytes) -> DockerfileParseError:
    with pytest.raises(DockerfileParseError) as caught:
        parse(text)
    return caught.value


# ---------------------------------------------------------------------------------------
# The seed Dockerfile of the issue, field by field
# ---------------------------------------------------------------------------------------


def test_seed_dockerfile() -> None:
    dockerfile = parse(SEED)
    assert dockerfile.escape == "\\"
    assert dockerfile.meta_args == ()
    (stage,) = dockerfile.stages
    assert (stage.name, stage.base, stage.platform) == (None, "busybox", None)
    assert (stage.original, stage.line) == ("FROM busybox", 1)

    def cmd(keyword: str, original: str, line: int) -> dict[str, object]:
        return {"keyword": keyword, "original": original, "line": line, "flags": {}}

    assert list(stage.commands) == [
        LabelCommand(
            **cmd("LABEL", SEED.splitlines()[1], 2),  # type: ignore[arg-type]
            pairs=(
                ("maintainer", '"zy@gmail.com"'),
                ("version", '"1.0"'),
                ("description", '"this is description"'),
            ),
        ),
        RunCommand(
            **cmd("RUN", "RUN echo a > /a && echo b > /b", 3),  # type: ignore[arg-type]
            cmd=("echo a > /a && echo b > /b",),
            prepend_shell=True,
        ),
        WorkdirCommand(**cmd("WORKDIR", "WORKDIR /test", 4), path="/test"),  # type: ignore[arg-type]
        WorkdirCommand(**cmd("WORKDIR", "WORKDIR demo", 5), path="demo"),  # type: ignore[arg-type]
        CopyCommand(
            **cmd("ADD", "ADD hello.php /", 6),  # type: ignore[arg-type]
            sources=("hello.php",),
            dest="/",
            is_add=True,
        ),
        CopyCommand(
            **cmd("ADD", "ADD test.tar.gz /", 7),  # type: ignore[arg-type]
            sources=("test.tar.gz",),
            dest="/",
            is_add=True,
        ),
        EnvCommand(
            **cmd("ENV", "ENV MYSQL_VERSION 5.6", 8),  # type: ignore[arg-type]
            pairs=(("MYSQL_VERSION", "5.6"),),
        ),
        RunCommand(
            **cmd("RUN", 'RUN echo "${MYSQL_VERSION}" > /v', 9),  # type: ignore[arg-type]
            cmd=('echo "${MYSQL_VERSION}" > /v',),
            prepend_shell=True,
        ),
        VolumeCommand(
            **cmd("VOLUME", "VOLUME /var/lib/mysql", 10),  # type: ignore[arg-type]
            paths=("/var/lib/mysql",),
        ),
        ExposeCommand(**cmd("EXPOSE", "EXPOSE 27017", 11), ports=("27017",)),  # type: ignore[arg-type]
        EntrypointCommand(
            **cmd("ENTRYPOINT", 'ENTRYPOINT ["/bin/echo"]', 12),  # type: ignore[arg-type]
            cmd=("/bin/echo",),
            prepend_shell=False,
        ),
        CmdCommand(
            **cmd("CMD", 'CMD ["hello docker"]', 13),  # type: ignore[arg-type]
            cmd=("hello docker",),
            prepend_shell=False,
        ),
    ]


def test_parse_error_is_invalid_parameter_with_line_and_reason() -> None:
    error = parse_error("FROM busybox\nFROMM x\n")
    assert isinstance(error, InvalidParameter)
    assert str(error) == "dockerfile parse error line 2: unknown instruction: FROMM"
    assert (error.line, error.reason) == (2, "unknown instruction: FROMM")


# ---------------------------------------------------------------------------------------
# Stages, meta ARGs
# ---------------------------------------------------------------------------------------


def test_multi_stage_with_as_and_copy_from() -> None:
    dockerfile = parse(
        "FROM golang:1.22 AS Builder\n"
        "WORKDIR /src\n"
        "RUN go build -o /out/app .\n"
        "\n"
        "from alpine as final\n"
        "COPY --from=builder /out/app /usr/bin/app\n"
        "COPY --from=0 --chown=1:1 --chmod=755 --link a b /dst/\n"
    )
    builder, final = dockerfile.stages
    assert (builder.name, builder.base, builder.line) == ("builder", "golang:1.22", 1)
    assert builder.original == "FROM golang:1.22 AS Builder"
    assert [c.keyword for c in builder.commands] == ["WORKDIR", "RUN"]
    assert (final.name, final.base, final.line) == ("final", "alpine", 5)
    first, second = final.commands
    assert isinstance(first, CopyCommand)
    assert (first.sources, first.dest, first.is_add) == (("/out/app",), "/usr/bin/app", False)
    assert first.flags == {"from": "builder"}
    assert isinstance(second, CopyCommand)
    assert second.flags == {"from": "0", "chown": "1:1", "chmod": "755", "link": "true"}
    assert (second.sources, second.dest) == (("a", "b"), "/dst/")


def test_args_before_from_are_meta_args() -> None:
    dockerfile = parse(
        "ARG BASE=busybox\n"
        "ARG TAG\n"
        "ARG A=1 B=\"two words\" C\n"
        "FROM --platform=$BUILDPLATFORM ${BASE}:${TAG:-latest} AS base\n"
        "ARG TAG\n"
        "RUN echo $TAG\n"
    )
    assert [a.args for a in dockerfile.meta_args] == [
        (("BASE", "busybox"),),
        (("TAG", None),),
        (("A", "1"), ("B", '"two words"'), ("C", None)),
    ]
    assert [a.line for a in dockerfile.meta_args] == [1, 2, 3]
    (stage,) = dockerfile.stages
    assert (stage.base, stage.platform, stage.name) == (
        "${BASE}:${TAG:-latest}",
        "$BUILDPLATFORM",
        "base",
    )
    arg, run = stage.commands
    assert isinstance(arg, ArgCommand) and arg.args == (("TAG", None),)
    assert isinstance(run, RunCommand)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("", 1, "file with no instructions"),
        ("\n\n", 2, "file with no instructions"),
        ("# just\n# comments\n\n", 3, "file with no instructions"),
        ("ARG A=1\n", 1, "dockerfile contains no stages to build"),
        ("RUN echo hi\nFROM busybox\n", 1, "no build stage in current context"),
        ("ARG A\nENV B=1\nFROM busybox\n", 2, "no build stage in current context"),
        ("FROMM busybox\n", 1, "unknown instruction: FROMM"),
        ("FROM busybox\n\nfoo bar\n", 3, "unknown instruction: FOO"),
        ("FROM busybox\nRUN ok\nCOPYY a b\n", 3, "unknown instruction: COPYY"),
        ("FROM\n", 1, "FROM requires either one or three arguments"),
        ("FROM a AS\n", 1, "FROM requires either one or three arguments"),
        ("FROM a b c\n", 1, "FROM requires either one or three arguments"),
        ("FROM a as b c\n", 1, "FROM requires either one or three arguments"),
        (
            "FROM a AS 1st\n",
            1,
            'invalid name for build stage: "1st", name can\'t start with a number or contain '
            "symbols",
        ),
        (
            "FROM a AS b$c\n",
            1,
            'invalid name for build stage: "b$c", name can\'t start with a number or contain '
            "symbols",
        ),
        ("FROM a AS x\nFROM b AS X\n", 2, 'duplicate stage name "x"'),
        ("FROM --platfrom=linux/amd64 a\n", 1, "Unknown flag: platfrom"),
        ("FROM --platform a\n", 1, "Missing a value on flag: platform"),
    ],
)
def test_structure_errors(text: str, line: int, reason: str) -> None:
    error = parse_error(text)
    assert (error.line, error.reason) == (line, reason)
    assert str(error) == f"dockerfile parse error line {line}: {reason}"


def test_empty_platform_is_no_platform() -> None:
    assert only_stage("FROM --platform= img\n").platform is None


@pytest.mark.parametrize("name", ["a", "build-stage_1.x", "stage2", "UPPER"])
def test_valid_stage_names_are_lower_cased(name: str) -> None:
    assert only_stage(f"FROM img As {name}\n").name == name.lower()


# ---------------------------------------------------------------------------------------
# Lines: directives, comments, continuations, encodings
# ---------------------------------------------------------------------------------------


def test_escape_directive_backtick() -> None:
    dockerfile = parse(
        "# escape=`\n"
        "\n"
        "FROM mcr.microsoft.com/windows/nanoserver\n"
        "COPY testfile.txt c:\\\n"
        "RUN dir c:\\ `\n"
        "    && echo done\n"
        "ENV A=a`\"b\n"
    )
    assert dockerfile.escape == "`"
    copy, run, env = dockerfile.stages[0].commands
    assert isinstance(copy, CopyCommand) and copy.dest == "c:\\"
    assert isinstance(run, RunCommand)
    assert run.cmd == ("dir c:\\     && echo done",)
    assert run.line == 5
    assert isinstance(env, EnvCommand) and env.pairs == (("A", 'a`"b'),)


@pytest.mark.parametrize(
    ("header", "escape"),
    [
        ("# escape=`\n", "`"),
        ("#escape=`\n", "`"),
        ("# ESCAPE = `  \n", "`"),
        ("   # Escape=`\n", "`"),
        ("# escape=\\\n", "\\"),
        ("# syntax=docker/dockerfile:1\n# escape=`\n", "`"),
        ("# escape=`\n# syntax=docker/dockerfile:1\n", "`"),
        ("# check=skip=all\n# escape=`\n", "`"),
        # anything else before the directive makes it a plain comment
        ("# a comment\n# escape=`\n", "\\"),
        ("\n# escape=`\n", "\\"),
        ("# unknown=1\n# escape=`\n", "\\"),
        ("FROM x\n# escape=`\n", "\\"),
        ("# escape `\n", "\\"),
    ],
)
def test_directive_placement(header: str, escape: str) -> None:
    text = header + "FROM x\n" if not header.startswith("FROM") else header
    assert parse(text).escape == escape


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("# escape=x\nFROM a\n", 1, "invalid escape token 'x' does not match ` or \\"),
        ("# escape=``\nFROM a\n", 1, "invalid escape token '``' does not match ` or \\"),
        (
            "# escape=`\n# escape=`\nFROM a\n",
            2,
            "only one escape parser directive can be used",
        ),
        (
            "# syntax=a\n# SYNTAX=b\nFROM a\n",
            2,
            "only one syntax parser directive can be used",
        ),
    ],
)
def test_directive_errors(text: str, line: int, reason: str) -> None:
    error = parse_error(text)
    assert (error.line, error.reason) == (line, reason)


def test_syntax_directive_is_accepted_and_ignored() -> None:
    dockerfile = parse("# syntax=docker/dockerfile:1.4\nFROM a\nRUN x\n")
    assert dockerfile.escape == "\\"
    assert dockerfile.stages[0].line == 2


def test_continuations_with_comments_and_blank_lines() -> None:
    stage = only_stage(
        "FROM busybox\n"
        "RUN apt-get update \\\n"
        "# a comment inside the continuation\n"
        "    # an indented comment\n"
        "\n"
        "   \n"
        "    && apt-get install -y curl \\   \t\n"
        "    && rm -rf /var/lib/apt/lists/*\n"
        "  # trailing comment\n"
        "CMD [\"sh\"]\n"
    )
    run, cmd = stage.commands
    assert isinstance(run, RunCommand)
    assert run.cmd == (
        "apt-get update     && apt-get install -y curl     && rm -rf /var/lib/apt/lists/*",
    )
    assert run.original == "RUN " + run.cmd[0]
    assert run.line == 2
    assert cmd.line == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the escape directly at the end of the line
        ("RUN a\\\nb\n", "RUN ab"),
        # whitespace after it is allowed
        ("RUN a \\  \n b\n", "RUN a  b"),
        # an escaped escape does not continue the line
        ("ENV P=C:\\\\\n", "ENV P=C:\\\\"),
        # a continuation that hits the end of the file ends the instruction
        ("RUN a \\\n", "RUN a"),
        ("RUN a \\\n\n# only a comment\n", "RUN a"),
        # a lone escape on a line continues too
        ("RUN a \\\n\\\n  b\n", "RUN a   b"),
        # a # in the middle of a line is not a comment
        ("RUN echo a # b\n", "RUN echo a # b"),
        # a comment line ending with the escape does not continue
        ("# note \\\nRUN x\n", "RUN x"),
        # leading whitespace before the keyword is ignored
        ("   \tRUN   x  \n", "RUN   x"),
    ],
)
def test_line_joining(text: str, expected: str) -> None:
    assert one(text).original == expected


def test_escaped_escape_at_end_of_line_ends_the_instruction() -> None:
    env, run = only_stage("FROM a\nENV P=C:\\\\\nRUN x\n").commands
    assert isinstance(env, EnvCommand) and env.pairs == (("P", "C:\\\\"),)
    assert isinstance(run, RunCommand) and run.line == 3


def test_line_numbers_count_physical_lines() -> None:
    stage = only_stage(
        "# comment\n"
        "\n"
        "FROM a\n"
        "RUN one \\\n"
        "  two \\\n"
        "  three\n"
        "\n"
        "# comment\n"
        "USER me\n"
    )
    assert stage.line == 3
    assert [c.line for c in stage.commands] == [4, 9]


def test_error_names_the_first_line_of_a_continued_instruction() -> None:
    error = parse_error("FROM a\nRUN ok\nCOPY \\\n  onlyone\n")
    assert error.line == 3
    assert error.reason.startswith("COPY requires at least two arguments")


def test_crlf_and_bom() -> None:
    text = "\ufeffFROM busybox\r\nRUN echo a \\\r\n  b\r\nCMD [\"x\"]\r\n"
    for source in (text, text.encode()):
        stage = only_stage(source)
        assert stage.base == "busybox"
        run, cmd = stage.commands
        assert isinstance(run, RunCommand) and run.cmd == ("echo a   b",)
        assert isinstance(cmd, CmdCommand) and cmd.cmd == ("x",)


def test_bom_before_a_directive() -> None:
    assert parse(b"\xef\xbb\xbf# escape=`\nFROM a\n").escape == "`"


def test_bytes_invalid_utf8_is_replaced_not_fatal() -> None:
    run = only_stage(b"FROM a\nRUN echo \xff\n").commands[0]
    assert isinstance(run, RunCommand) and run.cmd == ("echo \ufffd",)


def test_no_trailing_newline() -> None:
    assert one("USER me").original == "USER me"


def test_keywords_are_case_insensitive_original_is_not() -> None:
    stage = only_stage("from a\nrUn echo Hi\nEnTrYpOiNt [\"x\"]\n")
    run, entrypoint = stage.commands
    assert (run.keyword, run.original) == ("RUN", "rUn echo Hi")
    assert entrypoint.keyword == "ENTRYPOINT"


def test_heredoc_in_json_form_is_plain_text() -> None:
    run = one('RUN ["cat", "<<EOF"]\n')
    assert isinstance(run, RunCommand) and run.cmd == ("cat", "<<EOF")


# ---------------------------------------------------------------------------------------
# RUN / CMD / ENTRYPOINT: JSON or shell form
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rest", "cmd", "prepend_shell"),
    [
        ("echo hi", ("echo hi",), True),
        ('["echo", "hi"]', ("echo", "hi"), False),
        ('[ "echo" ,"hi" ]  ', ("echo", "hi"), False),
        ('["a\\"b", "\\u00e9"]', ('a"b', "é"), False),
        ("[]", (), False),
        # not valid JSON: the text is a shell command
        ("['echo', 'hi']", ("['echo', 'hi']",), True),
        ('["echo", "hi"', ('["echo", "hi"',), True),
        ('["echo" "hi"]', ('["echo" "hi"]',), True),
        ('["a"] && b', ('["a"] && b',), True),
        ('["a", NaN]', ('["a", NaN]',), True),
        ("[ -f x ] && echo y", ("[ -f x ] && echo y",), True),
        ("echo [\"x\"]", ('echo ["x"]',), True),
        # dockerd keeps a bare instruction: shell form with nothing to run
        ("", (), True),
    ],
)
def test_command_forms(rest: str, cmd: tuple[str, ...], prepend_shell: bool) -> None:
    for keyword, kind in (("RUN", RunCommand), ("CMD", CmdCommand),
                          ("ENTRYPOINT", EntrypointCommand)):
        parsed = one(f"{keyword} {rest}\n")
        assert isinstance(parsed, kind)
        assert (parsed.cmd, parsed.prepend_shell) == (cmd, prepend_shell)


@pytest.mark.parametrize("rest", ['["echo", 1]', "[null]", '[["a"]]', '["a", {"b": 1}]'])
def test_json_array_of_non_strings_is_an_error(rest: str) -> None:
    error = parse_error(f"FROM a\nCMD {rest}\n")
    assert (error.line, error.reason) == (
        2,
        "when using JSON array syntax, arrays must be comprised of strings only",
    )


def test_run_takes_buildkit_flags() -> None:
    run = one("RUN --mount=type=cache,target=/c --network=none --mount=type=tmpfs,target=/t "
              "make\n")
    assert isinstance(run, RunCommand)
    assert run.mounts == ("type=cache,target=/c", "type=tmpfs,target=/t")
    assert dict(run.flags) == {"network": "none"}
    assert run.cmd == ("make",)
    error = parse_error("FROM a\nRUN --mount type=cache true\n")
    assert error.reason == "Missing a value on flag: mount"
    error = parse_error("FROM a\nRUN --device=/dev/x true\n")
    assert error.reason == "Unknown flag: device"


def test_dashes_that_are_not_flags_stay_in_the_command() -> None:
    run = one("RUN -- --not-a-flag x\n")
    assert isinstance(run, RunCommand) and run.cmd == ("--not-a-flag x",)
    run = one("RUN -x --y\n")
    assert isinstance(run, RunCommand) and run.cmd == ("-x --y",)


# ---------------------------------------------------------------------------------------
# ENV / LABEL / ARG
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rest", "pairs"),
    [
        # legacy form: the first word is the key, the rest of the line the value
        ("A B C", (("A", "B C"),)),
        ("A   spaced   value  ", (("A", "spaced   value"),)),
        ('A "quoted value"', (("A", '"quoted value"'),)),
        ("A $B", (("A", "$B"),)),
        # key=value form; quotes and escapes are kept for the expansion to remove
        ("A=1", (("A", "1"),)),
        ("A=1 B=2", (("A", "1"), ("B", "2"))),
        ('A="x y" B=\'p q\'', (("A", '"x y"'), ("B", "'p q'"))),
        ("A=x\\ y", (("A", "x\\ y"),)),
        ('A="a\\"b"', (("A", '"a\\"b"'),)),
        ("A='a\\'", (("A", "'a\\'"),)),
        ("A= B=", (("A", ""), ("B", ""))),
        ('A=""', (("A", '""'),)),
        ("A=x=y", (("A", "x=y"),)),
        ("A=$B\tC=d", (("A", "$B"), ("C", "d"))),
    ],
)
def test_env_forms(rest: str, pairs: tuple[tuple[str, str], ...]) -> None:
    env = one(f"ENV {rest}\n")
    assert isinstance(env, EnvCommand) and env.pairs == pairs
    label = one(f"LABEL {rest}\n")
    assert isinstance(label, LabelCommand) and label.pairs == pairs


@pytest.mark.parametrize(
    ("instruction", "reason"),
    [
        ("ENV", "ENV requires at least one argument"),
        ("ENV A", "ENV must have two arguments"),
        ("ENV A=1 B", 'Syntax error - can\'t find = in "B". Must be of the form: name=value'),
        ("ENV =x", "ENV names can not be blank"),
        # words are split before any expansion, as dockerd does
        (
            "ENV A=${B:-c d}",
            'Syntax error - can\'t find = in "d}". Must be of the form: name=value',
        ),
        ("LABEL", "LABEL requires at least one argument"),
        ("LABEL key", "LABEL must have two arguments"),
        ("LABEL a=1 =2", "LABEL names can not be blank"),
        ("ARG", "ARG requires at least one argument"),
        ("ARG =x", "ARG names can not be blank"),
        ("ENV --x=1 A=1", "Unknown flag: x"),
    ],
)
def test_key_value_errors(instruction: str, reason: str) -> None:
    error = parse_error(f"FROM a\n{instruction}\n")
    assert (error.line, error.reason) == (2, reason)


@pytest.mark.parametrize(
    ("rest", "args"),
    [
        ("A", (("A", None),)),
        ("A=", (("A", ""),)),
        ("A=1 B C=3", (("A", "1"), ("B", None), ("C", "3"))),
        ('A="x y"', (("A", '"x y"'),)),
        ("A=$B", (("A", "$B"),)),
    ],
)
def test_arg_forms(rest: str, args: tuple[tuple[str, str | None], ...]) -> None:
    arg = one(f"ARG {rest}\n")
    assert isinstance(arg, ArgCommand) and arg.args == args


# ---------------------------------------------------------------------------------------
# COPY / ADD / VOLUME / EXPOSE / single-argument instructions / SHELL
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instruction", "sources", "dest", "flags"),
    [
        ("COPY a /b", ("a",), "/b", {}),
        ("COPY a b c /d/", ("a", "b", "c"), "/d/", {}),
        ('COPY ["a b", "c", "/d e/"]', ("a b", "c"), "/d e/", {}),
        ("COPY $SRC ${DEST}", ("$SRC",), "${DEST}", {}),
        ("COPY --chown=user:group a b", ("a",), "b", {"chown": "user:group"}),
        ('COPY --chown="a b" x y', ("x",), "y", {"chown": "a b"}),
        ("COPY --link=false a b", ("a",), "b", {"link": "false"}),
        ("COPY --link=TRUE a b", ("a",), "b", {"link": "true"}),
        ('COPY --from=build ["a", "b"]', ("a",), "b", {"from": "build"}),
        ("ADD http://x/y.tgz /", ("http://x/y.tgz",), "/", {}),
        (
            "ADD --checksum=sha256:abc --keep-git-dir --chmod=644 a b",
            ("a",),
            "b",
            {"checksum": "sha256:abc", "keep-git-dir": "true", "chmod": "644"},
        ),
    ],
)
def test_copy_and_add(
    instruction: str, sources: tuple[str, ...], dest: str, flags: dict[str, str]
) -> None:
    copy = one(instruction + "\n")
    assert isinstance(copy, CopyCommand)
    assert (copy.sources, copy.dest, dict(copy.flags)) == (sources, dest, flags)
    assert copy.is_add is instruction.startswith("ADD")
    assert copy.keyword == instruction.split()[0]


@pytest.mark.parametrize(
    ("instruction", "reason"),
    [
        (
            "COPY a",
            "COPY requires at least two arguments, but only one was provided. "
            "Destination could not be determined",
        ),
        (
            "ADD",
            "ADD requires at least two arguments, but only one was provided. "
            "Destination could not be determined",
        ),
        (
            'COPY ["a"]',
            "COPY requires at least two arguments, but only one was provided. "
            "Destination could not be determined",
        ),
        ("ADD --from=x a b", "Unknown flag: from"),
        ("COPY --checksum=x a b", "Unknown flag: checksum"),
        ("COPY --from=a --from=b x y", "Duplicate flag specified: from"),
        ("COPY --from a b", "Missing a value on flag: from"),
        ("COPY --link= a b", "Missing a value on flag: link"),
        ("COPY --link=yes a b", "Expecting boolean value for flag link, not: yes"),
        ('COPY [1, "b"]', "when using JSON array syntax, arrays must be comprised of strings only"),
    ],
)
def test_copy_errors(instruction: str, reason: str) -> None:
    error = parse_error(f"FROM a\n{instruction}\n")
    assert (error.line, error.reason) == (2, reason)


@pytest.mark.parametrize(
    ("rest", "paths"),
    [
        ("/data", ("/data",)),
        ("/a /b\t/c", ("/a", "/b", "/c")),
        ('["/a", "/b c"]', ("/a", "/b c")),
        ('[" /padded "]', ("/padded",)),
        ("$DATA", ("$DATA",)),
    ],
)
def test_volume(rest: str, paths: tuple[str, ...]) -> None:
    volume = one(f"VOLUME {rest}\n")
    assert isinstance(volume, VolumeCommand) and volume.paths == paths


@pytest.mark.parametrize(
    ("instruction", "reason"),
    [
        ("VOLUME", "VOLUME requires at least one argument"),
        ("VOLUME []", "VOLUME requires at least one argument"),
        ('VOLUME ["/a", " "]', "VOLUME specified can not be an empty string"),
        ("EXPOSE", "EXPOSE requires at least one argument"),
        ("USER", "USER requires exactly one argument"),
        ("WORKDIR", "WORKDIR requires exactly one argument"),
        ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
        ("MAINTAINER", "MAINTAINER requires exactly one argument"),
        ("USER --uid=1 me", "Unknown flag: uid"),
        ("SHELL", "SHELL requires at least one argument"),
        ("SHELL []", "SHELL requires at least one argument"),
        ("SHELL /bin/bash -c", "SHELL requires the arguments to be in JSON form"),
        ('SHELL ["/bin/bash", 1]',
         "when using JSON array syntax, arrays must be comprised of strings only"),
    ],
)
def test_argument_count_errors(instruction: str, reason: str) -> None:
    error = parse_error(f"FROM a\n{instruction}\n")
    assert (error.line, error.reason) == (2, reason)


def test_expose_words_are_sorted_like_dockerd() -> None:
    expose = one("EXPOSE 8080/tcp 443 80/udp ${PORT}\n")
    assert isinstance(expose, ExposeCommand)
    assert expose.ports == ("${PORT}", "443", "80/udp", "8080/tcp")


@pytest.mark.parametrize(
    ("instruction", "kind", "attribute", "value"),
    [
        ("USER app:app", UserCommand, "user", "app:app"),
        ("USER  ${UID}  ", UserCommand, "user", "${UID}"),
        ("WORKDIR /a b", WorkdirCommand, "path", "/a b"),
        ("WORKDIR $HOME/x", WorkdirCommand, "path", "$HOME/x"),
        ("STOPSIGNAL SIGKILL", StopSignalCommand, "signal", "SIGKILL"),
        ("MAINTAINER Jane Doe <j@d.o>", MaintainerCommand, "maintainer", "Jane Doe <j@d.o>"),
    ],
)
def test_single_argument_instructions(
    instruction: str, kind: type[Command], attribute: str, value: str
) -> None:
    parsed = one(instruction + "\n")
    assert isinstance(parsed, kind)
    assert getattr(parsed, attribute) == value


def test_shell_json() -> None:
    shell = one('SHELL ["/bin/bash", "-eo", "pipefail", "-c"]\n')
    assert isinstance(shell, ShellCommand)
    assert shell.shell == ("/bin/bash", "-eo", "pipefail", "-c")


# ---------------------------------------------------------------------------------------
# ONBUILD and parse_instruction
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instruction", "expression"),
    [
        ("ONBUILD RUN echo hi", "RUN echo hi"),
        ("onbuild   COPY --from=x a b", "COPY --from=x a b"),
        ("ONBUILD ADD . /app \\\n  /more", "ADD . /app   /more"),
    ],
)
def test_onbuild(instruction: str, expression: str) -> None:
    onbuild = one(instruction + "\n")
    assert isinstance(onbuild, OnbuildCommand)
    assert onbuild.expression == expression


@pytest.mark.parametrize(
    ("instruction", "reason"),
    [
        ("ONBUILD", "ONBUILD requires at least one argument"),
        ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD onbuild RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD maintainer me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
    ],
)
def test_onbuild_errors(instruction: str, reason: str) -> None:
    error = parse_error(f"FROM a\n{instruction}\n")
    assert (error.line, error.reason) == (2, reason)


def test_parse_instruction_for_triggers() -> None:
    run = parse_instruction("RUN echo hi")
    assert isinstance(run, RunCommand)
    assert (run.cmd, run.line, run.original) == (("echo hi",), 1, "RUN echo hi")
    copy = parse_instruction("COPY --from=build a b", line=7)
    assert isinstance(copy, CopyCommand) and copy.line == 7 and copy.flags == {"from": "build"}
    env = parse_instruction("ENV A=x`\"y", escape="`")
    assert isinstance(env, EnvCommand) and env.pairs == (("A", 'x`"y'),)
    joined = parse_instruction("RUN a \\\n b")
    assert isinstance(joined, RunCommand) and joined.cmd == ("a  b",)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected exactly one instruction, found 0"),
        ("# comment", "expected exactly one instruction, found 0"),
        ("RUN a\nRUN b", "expected exactly one instruction, found 2"),
        ("FROM busybox", "FROM isn't allowed as an ONBUILD trigger"),
        ("COPY a", "COPY requires at least two arguments, but only one was provided. "
                   "Destination could not be determined"),
        ("NOPE x", "unknown instruction: NOPE"),
    ],
)
def test_parse_instruction_errors(text: str, reason: str) -> None:
    with pytest.raises(DockerfileParseError) as caught:
        parse_instruction(text, line=4)
    assert (caught.value.line, caught.value.reason) == (4, reason)


# ---------------------------------------------------------------------------------------
# HEALTHCHECK
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instruction", "test", "timings", "retries"),
    [
        ("HEALTHCHECK NONE", ("NONE",), (None, None, None, None), None),
        ("healthcheck none", ("NONE",), (None, None, None, None), None),
        ("HEALTHCHECK CMD curl -f http://localhost/ || exit 1",
         ("CMD-SHELL", "curl -f http://localhost/ || exit 1"), (None, None, None, None), None),
        ('HEALTHCHECK CMD ["curl", "-f", "x"]', ("CMD", "curl", "-f", "x"),
         (None, None, None, None), None),
        ("HEALTHCHECK   cmd   a b", ("CMD-SHELL", "a b"), (None, None, None, None), None),
        (
            "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=500ms "
            "--start-interval=2s --retries=3 CMD true",
            ("CMD-SHELL", "true"),
            (30.0, 90.0, 0.5, 2.0),
            3,
        ),
        ("HEALTHCHECK --interval=0s --retries=0 CMD [\"x\"]", ("CMD", "x"),
         (0.0, None, None, None), 0),
        ("HEALTHCHECK --interval= CMD x", ("CMD-SHELL", "x"), (None, None, None, None), None),
        ("HEALTHCHECK --interval=1.5h CMD x", ("CMD-SHELL", "x"),
         (5400.0, None, None, None), None),
    ],
)
def test_healthcheck(
    instruction: str,
    test: tuple[str, ...],
    timings: tuple[float | None, ...],
    retries: int | None,
) -> None:
    health = one(instruction + "\n")
    assert isinstance(health, HealthcheckCommand)
    assert health.test == test
    assert (health.interval, health.timeout, health.start_period, health.start_interval) == (
        timings
    )
    assert health.retries == retries


@pytest.mark.parametrize(
    ("instruction", "reason"),
    [
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK CMD []", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK CONNECT TCP 7000", 'Unknown type "CONNECT" in HEALTHCHECK (try CMD)'),
        ("HEALTHCHECK --interval=30 CMD x", 'time: missing unit in duration "30"'),
        ("HEALTHCHECK --timeout=abc CMD x", 'time: invalid duration "abc"'),
        ("HEALTHCHECK --timeout=3y CMD x", 'time: unknown unit "y" in duration "3y"'),
        ("HEALTHCHECK --interval=10us CMD x", 'Interval "interval" cannot be less than 1ms'),
        ("HEALTHCHECK --start-period=-1s CMD x",
         'Interval "start-period" cannot be less than 1ms'),
        ("HEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative (-1)"),
        ("HEALTHCHECK --retries=x CMD x", 'strconv.ParseInt: parsing "x": invalid syntax'),
        ("HEALTHCHECK --retries=3000000000 CMD x",
         'strconv.ParseInt: parsing "3000000000": value out of range'),
        ("HEALTHCHECK --count=1 CMD x", "Unknown flag: count"),
        ("HEALTHCHECK CMD [1]", "when using JSON array syntax, arrays must be comprised of "
                                "strings only"),
    ],
)
def test_healthcheck_errors(instruction: str, reason: str) -> None:
    error = parse_error(f"FROM a\n{instruction}\n")
    assert (error.line, error.reason) == (2, reason)


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        ("-0", 0),
        ("1ns", 1),
        ("1us", 1_000),
        ("1µs", 1_000),
        ("1μs", 1_000),
        ("500ms", 500_000_000),
        ("30s", 30_000_000_000),
        ("1m30s", 90_000_000_000),
        ("1h", 3_600_000_000_000),
        ("1.5s", 1_500_000_000),
        (".5s", 500_000_000),
        ("5.s", 5_000_000_000),
        ("+2m", 120_000_000_000),
        ("-1.5h", -5_400_000_000_000),
        ("1h2m3s4ms5us6ns", 3_723_004_005_006),
    ],
)
def test_go_durations(text: str, nanoseconds: int) -> None:
    assert parse_go_duration(text) == nanoseconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'time: invalid duration ""'),
        ("-", 'time: invalid duration "-"'),
        ("s", 'time: invalid duration "s"'),
        (".s", 'time: invalid duration ".s"'),
        ("10", 'time: missing unit in duration "10"'),
        ("1h30", 'time: missing unit in duration "1h30"'),
        ("1d", 'time: unknown unit "d" in duration "1d"'),
        ("1 s", 'time: unknown unit " s" in duration "1 s"'),
        ("9999999999h", 'time: invalid duration "9999999999h"'),
    ],
)
def test_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace(".", r"\.") + "$"):
        parse_go_duration(text)


# ---------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------

# Shell-form text that cannot be mistaken for JSON, flags, comments or continuations.
_SHELL_TEXT = st.text(
    alphabet=st.characters(
        blacklist_characters="\n\r\\[#-", blacklist_categories=("Cs", "Cc", "Zl", "Zp")
    ),
    min_size=1,
    max_size=60,
).map(str.strip).filter(bool)


@given(_SHELL_TEXT)
def test_shell_form_keeps_the_text(text: str) -> None:
    run = one(f"RUN {text}\n")
    assert isinstance(run, RunCommand)
    assert run.cmd == (text,) and run.prepend_shell


@given(st.lists(st.text(max_size=10), max_size=5))
def test_json_form_round_trips(argv: list[str]) -> None:
    import json

    cmd = one(f"CMD {json.dumps(argv)}\n")
    assert isinstance(cmd, CmdCommand)
    assert cmd.cmd == tuple(argv) and not cmd.prepend_shell


def test_dockerfile_is_a_frozen_value() -> None:
    dockerfile = parse("FROM a\nRUN b\n")
    assert dockerfile == parse("FROM a\nRUN b\n")
    assert isinstance(dockerfile, Dockerfile)
    with pytest.raises(AttributeError):
        dockerfile.escape = "`"  # type: ignore[misc]
    with pytest.raises(TypeError):
        dockerfile.stages[0].commands[0].flags["x"] = "y"  # type: ignore[index]


def test_heredocs_in_run_copy_and_add() -> None:
    parsed = parse("FROM a\nRUN <<EOT\necho built > /built\nEOT\n"
                   "RUN cat <<A > /x && cat <<-\"B\"\nhello $X\nA\n\tworld\n\tB\n"
                   "COPY <<one <<'two' /dst/\n1 $V\none\n2 $V\ntwo\nCMD <<x\n")
    script, shell, copy, cmd = parsed.stages[0].commands
    assert isinstance(script, RunCommand) and script.cmd == ("echo built > /built\n",)
    assert isinstance(shell, RunCommand)
    # the shell reads the heredocs itself: line and bodies as written
    assert shell.cmd == ('cat <<A > /x && cat <<-"B"\nhello $X\nA\n\tworld\n\tB\n',)
    assert [(h.name, h.content, h.expand) for h in shell.heredocs] == [
        ("A", "hello $X\n", True), ("B", "world\n", False)]
    assert isinstance(copy, CopyCommand) and copy.sources == ("<<one", "<<'two'")
    assert [(h.name, h.content, h.expand) for h in copy.heredocs] == [
        ("one", "1 $V\n", True), ("two", "2 $V\n", False)]
    # CMD has no heredocs: the text stays the command (and the next line an instruction)
    assert cmd.keyword == "CMD"


def test_unterminated_heredoc_is_an_error() -> None:
    error = parse_error("FROM a\nRUN <<EOT\necho x\n")
    assert error.reason == "unterminated heredoc EOT"
