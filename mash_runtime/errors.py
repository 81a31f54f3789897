"""The errors services raise for a caller to answer: each carries its HTTP status, an
UPPER_SNAKE code and details (mash_api turns them into the error envelope). A leaf module:
anything may import it, it imports nothing of ours."""

from __future__ import annotations


class ServiceError(Exception):
    """A kind of error is a subclass naming its status and code:
    `class NotFound(ServiceError, status=404, code="NOT_FOUND")`; an instance may override both."""

    status = 400
    code = "INVALID_REQUEST"

    def __init_subclass__(cls, *, status: int | None = None, code: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.details = details or {}


class NotFound(ServiceError, status=404, code="NOT_FOUND"):
    """What the call names does not exist."""


class Conflict(ServiceError, status=409, code="CONFLICT"):
    """The call does not fit the record's state now (already answered, a run already active)."""


class Gone(ServiceError, status=410, code="GONE"):
    """What the call names has ended (an interaction cancelled or timed out)."""


class InvalidInput(ServiceError, status=422, code="VALIDATION_ERROR"):
    """422 VALIDATION_ERROR: `details.errors` names each value at fault as `{loc, msg, type}`
    (http-api.md's shape, the one FastAPI clients know)."""

    def __init__(self, message: str, errors: list[dict]):
        super().__init__(message, details={"errors": errors})


def invalid(loc: list | tuple, msg: str, type_: str = "value_error", *, message: str | None = None) -> InvalidInput:
    """The 422 for one value: `loc` like `["query", "limit"]`; the message defaults to `"<name>: <msg>"`."""
    loc = list(loc)
    return InvalidInput(message or f"{loc[-1]}: {msg}", [{"loc": loc, "msg": msg, "type": type_}])
