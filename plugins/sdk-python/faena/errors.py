"""Typed errors: business (the data is wrong; never retried) or application (the
portal or network failed; retried with backoff)."""

from __future__ import annotations

from typing import Optional

from componentize_py_types import Err
from wit_world.imports import types


class FaenaError(Exception):
    """The base of the two kinds; raise one of them, not this."""

    kind: types.ErrorKind = types.ErrorKind.APPLICATION

    def __init__(
        self, message: str, code: Optional[str] = None, retry_after_ms: Optional[int] = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retry_after_ms = retry_after_ms

    def context(self, what: str) -> "FaenaError":
        """Prefix the message with what was being done; returns self, to re-raise."""
        self.message = f"{what}: {self.message}"
        self.args = (self.message,)
        return self

    def to_wit(self) -> types.PluginError:
        return types.PluginError(self.kind, self.message, self.code, self.retry_after_ms)

    def __repr__(self) -> str:
        code = f", code={self.code!r}" if self.code else ""
        return f"{type(self).__name__}({self.message!r}{code})"


class BusinessError(FaenaError):
    """The data's fault (an unknown product, a refused login): never retried; the
    item fails or goes to review."""

    kind = types.ErrorKind.BUSINESS

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message, code)


class ApplicationError(FaenaError):
    """The portal's or the network's fault (down, slow, a changed page): retried with
    backoff, at least `retry_after_ms` later when given."""

    kind = types.ErrorKind.APPLICATION


def from_wit(e: types.PluginError) -> FaenaError:
    """The Python error for a plugin-error a host call returned."""
    if e.kind == types.ErrorKind.BUSINESS:
        return BusinessError(e.message, e.code)
    return ApplicationError(e.message, e.code, e.retry_after_ms)


def host_call(fn, *args):
    """Call a host import; its plugin-error becomes a BusinessError or ApplicationError."""
    try:
        return fn(*args)
    except Err as e:
        if isinstance(e.value, types.PluginError):
            raise from_wit(e.value) from None
        raise
