"""The whole engine-category → HTTP-status table, and the shape of every error body."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web
from pydantic import BaseModel, ValidationError

from api.errors import (
    STATUS_BY_CATEGORY,
    error_response,
    json_response,
    response_for_exception,
    response_for_http_exception,
    status_for,
)
from engine import errors

TABLE = [
    (errors.NotFound, 404),
    (errors.InvalidParameter, 400),
    (errors.Conflict, 409),
    (errors.NotModified, 304),
    (errors.Forbidden, 403),
    (errors.Unauthorized, 401),
    (errors.Unavailable, 503),
    (errors.NotSupported, 501),
    (errors.SystemError_, 500),
    (errors.EngineError, 500),
]


def test_table_is_complete() -> None:
    categories = {cls for cls, _ in TABLE} - {errors.EngineError}
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type)
        and issubclass(obj, errors.EngineError)
        and obj is not errors.EngineError
    }
    assert defined <= categories, "a new engine error category needs a status"
    assert {cls: STATUS_BY_CATEGORY[cls] for cls in categories} == dict(
        (cls, status) for cls, status in TABLE if cls in categories
    )


@pytest.mark.parametrize(("category", "status"), TABLE)
def test_status_for_each_category(category: type[errors.EngineError], status: int) -> None:
    assert status_for(category("x")) == status


def test_subclasses_inherit_their_category() -> None:
    class NoSuchThing(errors.NotFound):
        pass

    assert status_for(NoSuchThing("gone")) == 404


def _validation_error() -> ValidationError:
    class Model(BaseModel):
        Image: str

    try:
        Model.model_validate({"Image": 123})
    except ValidationError as exc:
        return exc
    raise AssertionError("no error")


def test_validation_error_is_400_with_field_in_message() -> None:
    exc = _validation_error()
    assert status_for(exc) == 400
    response = response_for_exception(exc)
    assert response.status == 400
    assert json.loads(response.body)["message"].startswith("invalid JSON: Image: ")  # type: ignore[arg-type]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("k"), TimeoutError()])
def test_anything_else_is_500_and_logged(exc: Exception, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="api.errors"):
        response = response_for_exception(exc)
    assert response.status == 500
    assert json.loads(response.body)["message"]  # type: ignore[arg-type]
    assert caplog.records and caplog.records[0].exc_info is not None


@pytest.mark.parametrize(("category", "status"), [t for t in TABLE if t[1] != 304])
def test_error_body_and_exact_content_type(category: type[errors.EngineError], status: int) -> None:
    response = response_for_exception(category("No such container: good"))
    assert response.status == status
    # the Go client compares the header for equality: no "; charset=utf-8"
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == {"message": "No such container: good"}  # type: ignore[arg-type]


def test_not_modified_has_no_body() -> None:
    response = response_for_exception(errors.NotModified("already running"))
    assert response.status == 304
    assert response.body is None


def test_json_response_content_type_and_compact_body() -> None:
    response = json_response({"a": [1, 2], "é": "ü"}, status=201)
    assert response.status == 201
    assert response.headers["Content-Type"] == "application/json"
    assert response.body == '{"a":[1,2],"é":"ü"}'.encode()


def test_error_response_shape() -> None:
    response = error_response(409, "in use")
    assert json.loads(response.body) == {"message": "in use"}  # type: ignore[arg-type]


@pytest.mark.parametrize("exc", [web.HTTPNotFound(), web.HTTPMethodNotAllowed("POST", ["GET"])])
def test_no_route_and_wrong_method_are_page_not_found(exc: web.HTTPException) -> None:
    response = response_for_http_exception(exc)
    assert response.status == 404
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == {"message": "page not found"}  # type: ignore[arg-type]


def test_redirect_keeps_location_without_body() -> None:
    response = response_for_http_exception(web.HTTPMovedPermanently(location="/info"))
    assert response.status == 301
    assert response.headers["Location"] == "/info"
    assert response.body is None


def test_too_large_is_json() -> None:
    response = response_for_http_exception(web.HTTPRequestEntityTooLarge(100, 200))
    assert response.status == 413
    assert response.headers["Content-Type"] == "application/json"
    assert "100" in json.loads(response.body)["message"]  # type: ignore[arg-type]
