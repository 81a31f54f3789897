"""The errors services raise for a caller to answer: each carries its HTTP status, an
UPPER_SNAKE code and details (mash_api turns them into the error envelope). A leaf module:
anything may import it, it imports nothing of ours."""

from __future__ import annotations


class ServiceError(Exception):
    status = 400
    code = "INVALID_REQUEST"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.details = details or {}


class NotFound(ServiceError):
    status = 404
    code = "NOT_FOUND"


class Conflict(ServiceError):
    status = 409
    code = "CONFLICT"


class Gone(ServiceError):
    status = 410
    code = "GONE"


class InvalidInput(ServiceError):
    """422 VALIDATION_ERROR: `details.errors` names each value at fault as `{loc, msg, type}`
    (http-api.md's shape, the one FastAPI clients know)."""

    status = 422
    code = "VALIDATION_ERROR"

    def __init__(self, message: str, errors: list[dict]):
        super().__init__(message, details={"errors": errors})


def invalid(loc: list | tuple, msg: str, type_: str = "value_error", *, message: str | None = None) -> InvalidInput:
    """The 422 for one value: `loc` like `["query", "limit"]`; the message defaults to `"<name>: <msg>"`."""
    loc = list(loc)
    return InvalidInput(message or f"{loc[-1]}: {msg}", [{"loc": loc, "msg": msg, "type": type_}])
