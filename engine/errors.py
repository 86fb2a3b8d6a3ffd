"""Error categories of the engine.

The engine raises only these; ``api/errors.py`` maps each category to one HTTP status.
Nothing here knows about HTTP. The message is what the client prints, so it follows
dockerd's wording where clients (or people) depend on it.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose (maps to 500 unless refined)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(EngineError):
    """The object does not exist (404)."""


class InvalidParameter(EngineError):
    """The request is malformed or a value is out of range (400)."""


class Conflict(EngineError):
    """The object's current state forbids the operation (409)."""


class NotModified(EngineError):
    """The object is already in the requested state (304, empty body)."""


class Forbidden(EngineError):
    """The operation is never allowed on this object (403)."""


class Unauthorized(EngineError):
    """Credentials are missing or wrong (401)."""


class Unavailable(EngineError):
    """A dependency is down or the engine is shutting down (503)."""


class NotSupported(EngineError):
    """The feature exists in Docker but not here, or not with these options (501)."""


class SystemError_(EngineError):
    """Something failed below us (runtime, disk). Kept distinct for logging (500)."""
