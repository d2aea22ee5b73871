"""Bearer-token authentication from a token file, and the request-size limit.

The token is read once from a file (never from the command line, where
``ps`` would show it) and compared in constant time; it is never logged or
echoed. Requests without the right ``Authorization: Bearer <token>`` get a
401 before their body is read.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

MIN_TOKEN_CHARS = 16


def read_token(path: str | os.PathLike[str]) -> str:
    """The token in ``path`` (surrounding whitespace stripped); ValueError if empty or short."""
    token = Path(path).read_text(encoding="utf-8").strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(f"token file {path}: the token must be one word of at least {MIN_TOKEN_CHARS} characters")
    return token


class TokenCheck:
    """Checks ``Authorization`` header values against one token (or allows all when there is none)."""

    def __init__(self, token: str | None) -> None:
        self._expected = None if token is None else f"Bearer {token}"

    @property
    def enabled(self) -> bool:
        return self._expected is not None

    def allows(self, header: str | None) -> bool:
        """True if auth is off, or ``header`` is exactly ``Bearer <token>``."""
        if self._expected is None:
            return True
        return header is not None and hmac.compare_digest(header, self._expected)

    def __repr__(self) -> str:  # never show the token
        return f"TokenCheck(enabled={self.enabled})"


class BodyTooLarge(ValueError):
    """The request body exceeds the configured limit."""
