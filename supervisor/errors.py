"""The one exception type the API turns into an error reply."""

from __future__ import annotations

from events.domain import ErrorCode

__all__ = ["ApiError"]


class ApiError(Exception):
    """``code`` names the kind of failure (the error frame's code); ``message`` says what
    happened and what to do about it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
