"""Request bodies decoded as dockerd's Go ``encoding/json`` decodes them.

dockerd decodes every body into typed Go structs, so a wrong JSON type or a number that
does not fit its Go integer is refused before anything happens, with Go's words:
``json: cannot unmarshal string into Go struct field HostConfig.HostConfig.Memory of type
int64`` (the innermost struct's name, then the path of JSON keys from the top, then the
Go type). Current dockerd answers 400 with an ``invalid JSON: `` prefix.

Wire models here derive from ``WireModel``: strict types (no coercion), unknown keys
ignored, and ``null`` treated as "not given" (Go leaves the field at its zero value).
Integer fields carry their Go type (``Int64``, ``Uint16`` …), which both bounds them and
names them in messages. Text arrives with lone surrogates already replaced by U+FFFD
(``api.params.read_json``), as Go decodes them.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.errors import InvalidParameter


@dataclass(frozen=True)
class GoType:
    """The Go type a field decodes into, for the error message."""

    name: str


def _null_is(zero: Any) -> BeforeValidator:
    """Go stores its zero value where JSON says null (in a list or a map too)."""
    return BeforeValidator(lambda value: zero if value is None else value)


def _go_int(name: str, low: int, high: int) -> Any:
    return Annotated[int, _null_is(0), Field(ge=low, le=high), GoType(name)]


Int64 = _go_int("int64", -(2**63), 2**63 - 1)
Int = _go_int("int", -(2**63), 2**63 - 1)
Uint = _go_int("uint", 0, 2**64 - 1)
Uint16 = _go_int("uint16", 0, 2**16 - 1)
Uint32 = _go_int("uint32", 0, 2**32 - 1)
Uint64 = _go_int("uint64", 0, 2**64 - 1)
Duration = _go_int("time.Duration", -(2**63), 2**63 - 1)


def _refuse_nul(text: str) -> str:
    if "\x00" in text:
        raise PydanticCustomError("nul_byte", "text contains a NUL byte")
    return text


# Text that reaches the kernel or a file (argv, environment, paths, names, labels): a NUL
# byte cannot travel there, so it is refused at the request instead of failing later.
Text = Annotated[str, _null_is(""), AfterValidator(_refuse_nul)]
# ``map[string]struct{}`` values (ExposedPorts, Volumes): only an object (or null) fits.
EmptyStruct = Annotated[dict[str, Any], _null_is({}), GoType("struct {}")]

_JSON_KINDS: dict[type, str] = {
    bool: "bool", int: "number", float: "number", str: "string", list: "array",
    dict: "object", type(None): "null",
}
_INTEGER_GO_TYPES = frozenset({"int", "int64", "uint", "uint16", "uint32", "uint64",
                               "time.Duration"})


class WireModel(BaseModel):
    """A Go struct on the wire. ``GO_NAME`` is the struct's name in Go's messages."""

    model_config = ConfigDict(extra="ignore", strict=True)
    GO_NAME: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _as_go_reads_it(cls, data: Any) -> Any:
        # Go leaves a field at its zero value when the JSON says null (docker-py and the
        # CLI send null for much of what they leave unset), and matches keys without
        # regard to case when no key matches exactly (docker-py sends "detachKeys").
        if isinstance(data, dict):
            return {key: value for key, value in canonical_keys(cls, data).items()
                    if value is not None}
        return data


def canonical_keys(model: type[WireModel], raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with keys renamed to the model's fields where only the case differs."""
    fields = model.model_fields
    folded = {name.lower(): name for name in fields}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key if key in fields else folded.get(str(key).lower(), key)
        if name != key and name in raw:
            continue  # an exact match wins over a case-insensitive one
        out[name] = value
    return out


M = TypeVar("M", bound=WireModel)


def json_kind(value: Any) -> str:
    return _JSON_KINDS.get(type(value), "value")


def decode(model: type[M], data: Any, go_value_type: str) -> M:
    """``data`` (parsed JSON) as ``model``, or InvalidParameter with Go's message.

    ``go_value_type`` is the package-qualified type named when the body itself has the
    wrong shape (``container.CreateRequest``).
    """
    if not isinstance(data, dict):
        raise InvalidParameter(
            f"invalid JSON: json: cannot unmarshal {json_kind(data)} into Go value of "
            f"type {go_value_type}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidParameter(error_message(model, exc)) from None


def error_message(model: type[WireModel], exc: ValidationError) -> str:
    """dockerd's 400 text for the first error pydantic found: Go's UnmarshalTypeError
    behind ``invalid JSON: ``, or the NUL byte refusal."""
    error = exc.errors()[0]
    struct, path, go_type = _locate(model, error.get("loc", ()))
    value = error.get("input")
    if error.get("type") == "nul_byte":
        where = ".".join(path) or "value"
        return f"invalid {where}: NUL byte (\\x00) not allowed: {value!r}"
    return "invalid JSON: " + _unmarshal_text(struct, path, go_type, value)


def _unmarshal_text(struct: str, path: list[str], go_type: str, value: Any) -> str:
    got = json_kind(value)
    if go_type in _INTEGER_GO_TYPES and got == "number":
        got = f"number {value!r}"  # Go quotes the literal it could not fit
    if not path:
        return f"json: cannot unmarshal {got} into Go value of type {go_type}"
    return (f"json: cannot unmarshal {got} into Go struct field "
            f"{struct}.{'.'.join(path)} of type {go_type}")


def _locate(model: type[WireModel], loc: tuple[int | str, ...]) -> tuple[str, list[str], str]:
    """Walk an error location through the model: (innermost struct, key path, Go type)."""
    struct = model.GO_NAME
    path: list[str] = []
    annotation: Any = model
    for part in loc:
        annotation = _strip_optional(annotation)
        if isinstance(annotation, type) and issubclass(annotation, WireModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                continue  # a pydantic-internal step (union member, validator)
            struct = annotation.GO_NAME
            path.append(str(part))
            annotation = _field_annotation(field.annotation, field.metadata)
        elif typing.get_origin(annotation) in (list, tuple):
            annotation = (typing.get_args(annotation) or (Any,))[0]
        elif typing.get_origin(annotation) is dict:
            annotation = (typing.get_args(annotation) or (Any, Any))[1]
    return struct, path, go_type_name(annotation)


def _field_annotation(annotation: Any, metadata: list[Any]) -> Any:
    for item in metadata:
        if isinstance(item, GoType):
            return Annotated[annotation, item]
    return annotation


def _strip_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _strip_optional(members[0])
    if origin is Annotated and not any(isinstance(m, GoType)
                                       for m in annotation.__metadata__):
        return _strip_optional(typing.get_args(annotation)[0])
    return annotation


def go_type_name(annotation: Any) -> str:
    annotation = _strip_optional(annotation)
    if typing.get_origin(annotation) is Annotated:
        for item in annotation.__metadata__:
            if isinstance(item, GoType):
                return item.name
        return go_type_name(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, WireModel):
        return annotation.GO_NAME
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, tuple):
        return "[]" + go_type_name(args[0] if args else Any)
    if origin is dict:
        return f"map[{go_type_name(args[0])}]{go_type_name(args[1])}"
    simple = {str: "string", bool: "bool", int: "int64", float: "float64"}
    if isinstance(annotation, type) and annotation in simple:
        return simple[annotation]
    return "interface {}"


def plain(model: WireModel, raw: dict[str, Any]) -> dict[str, Any]:
    """Every field of ``model`` as plain JSON data, zero values for those not given.

    Nested structs (mounts, ulimits, endpoint settings …) are returned as the client
    sent them once checked: the engine reads them in Docker's shapes, and inspect echoes
    them without keys the client left out.
    """
    raw = canonical_keys(type(model), raw)
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if _holds_struct(value) and raw.get(name) is not None:
            out[name] = copy.deepcopy(raw[name])
        else:
            out[name] = _to_plain(value)
    return out


def given(model: WireModel, raw: dict[str, Any]) -> dict[str, Any]:
    """Only the fields the client sent (and not as null), checked, as plain data."""
    full = plain(model, raw)
    raw = canonical_keys(type(model), raw)
    return {name: full[name] for name in full if raw.get(name) is not None}


def _holds_struct(value: Any) -> bool:
    if isinstance(value, WireModel):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_struct(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_struct(v) for v in value.values())
    return False


def _to_plain(value: Any) -> Any:
    if isinstance(value, WireModel):
        return value.model_dump()
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value
