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
