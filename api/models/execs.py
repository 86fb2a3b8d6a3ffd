"""Wire models for exec: ``POST /containers/{id}/exec`` (``container.ExecOptions``) and
``POST /exec/{id}/start`` (``container.ExecStartOptions``), typed as dockerd decodes
them. The engine reads the checked body (engine.containers.exec.parse_exec_config)."""

from __future__ import annotations

from typing import Any

from api.models.gojson import Text, Uint, WireModel, decode


class ExecOptions(WireModel):
    GO_NAME = "ExecOptions"

    User: Text = ""
    Privileged: bool = False
    Tty: bool = False
    ConsoleSize: list[Uint] | None = None
    AttachStdin: bool = False
    AttachStderr: bool = False
    AttachStdout: bool = False
    Detach: bool = False
    DetachKeys: Text = ""
    Env: list[Text] | None = None
    WorkingDir: Text = ""
    Cmd: list[Text] | None = None  # a plain []string: unlike create's, not a strslice


class ExecStartOptions(WireModel):
    GO_NAME = "ExecStartOptions"

    Detach: bool = False
    Tty: bool = False
    ConsoleSize: list[Uint] | None = None


def check_exec_create(data: Any) -> dict[str, Any]:
    """The create body, checked; an empty body is an empty object."""
    if data is None:
        return {}
    decode(ExecOptions, data, "container.ExecOptions")
    return dict(data)


def check_exec_start(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    decode(ExecStartOptions, data, "container.ExecStartOptions")
    return dict(data)
