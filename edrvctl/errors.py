"""The one table of failures: each kind has its HTTP status (server side) and exit code (CLI side).

The server raises these from `fleet`, the API turns them into eDRV envelopes with `http_status`,
the client turns an HTTP status back into the same class, and the CLI exits with `exit_code`.
Exit codes are frozen; README.md documents them.
"""

from __future__ import annotations


class EdrvError(Exception):
    http_status = 500
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(EdrvError):
    """Bad arguments or a bad request body."""

    http_status = 400
    exit_code = 2


class InvalidBody(UsageError):
    http_status = 422


class NotFound(EdrvError):
    http_status = 404
    exit_code = 3


class AuthError(EdrvError):
    http_status = 401
    exit_code = 4


class Conflict(EdrvError):
    """Duplicate endpoint, or the station refused what was asked (CALLERROR / Rejected)."""

    http_status = 409
    exit_code = 5


class StationRejected(Conflict):
    """The station answered, but with a CALLERROR or a refusal."""

    http_status = 502


class StaleRecord(Conflict):
    """The record changed since it was read (another writer saved it): read it again."""


class Unavailable(EdrvError):
    """The API is unreachable, or the station is offline or inactive."""

    http_status = 406
    exit_code = 6


class Busy(Unavailable):
    """Too many commands already wait for that station."""

    http_status = 429


class StoreUnavailable(Unavailable):
    """The store cannot be written (disk full, read-only, I/O error): nothing was changed."""

    http_status = 507


class Fenced(StoreUnavailable):
    """This node no longer owns the chargestation it wrote for (another node claimed it with a
    newer epoch): nothing of the unit was stored."""


class OverBudget(EdrvError):
    """A station sent more than its budget allows (connectors, stored bytes, payload size):
    not stored, answered with a CALLERROR, and kept as one event for the admin."""

    http_status = 413
    exit_code = 5


class StationTimeout(EdrvError):
    http_status = 504
    exit_code = 7


EXIT_INTERRUPTED = 130

# HTTP status -> error class, for the client. 5xx other than ours are plain errors.
BY_STATUS: dict[int, type[EdrvError]] = {
    400: UsageError,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    406: Unavailable,
    409: Conflict,
    429: Busy,
    507: StoreUnavailable,
    422: InvalidBody,
    502: StationRejected,
    504: StationTimeout,
}
