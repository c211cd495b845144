"""The one exception type the API turns into an error reply."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """``code`` is one of supervisor.protocol's error codes; ``message`` says what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
