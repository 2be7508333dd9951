"""API errors: each becomes ``{"msg": ...}`` with the reference's status code and wording."""

from __future__ import annotations


class ApiError(Exception):
    status = 500
    headers: dict[str, str] = {}  # sent with the answer

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class InvalidRequest(ApiError):
    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(f"Process request error: {detail}")


class InvalidToken(ApiError):
    status = 401

    def __init__(self) -> None:
        super().__init__("Authentication error: Invalid token")


class WrongCredentials(ApiError):
    status = 401

    def __init__(self) -> None:
        super().__init__("Authentication error: Wrong credentials")


class WorkerGone(WrongCredentials):
    """A worker token whose worker the coordinator no longer has."""

    def __init__(self, worker_uuid: object) -> None:
        ApiError.__init__(self, f"Authentication error: worker {worker_uuid} is gone: it was shut down, or removed after missing its heartbeats")


class PermissionDenied(ApiError):
    status = 403

    def __init__(self, why: str | None = None) -> None:
        super().__init__("Authentication error: Permission denied" + (f": {why}" if why else ""))


class QuotaExceeded(ApiError):
    status = 403

    def __init__(self) -> None:
        super().__init__("Resource quota exceeded")


class NotFound(ApiError):
    status = 404

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")


class TooManyLogins(ApiError):
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Authentication error: too many failed logins for this user or from this address; retry in {retry_after} s")
        self.headers = {"Retry-After": str(retry_after)}


class PayloadTooLarge(ApiError):
    status = 413

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"Payload too large: the body has {size} bytes, the limit is {limit}")


class InsufficientStorage(ApiError):
    status = 507

    def __init__(self, why: str) -> None:
        super().__init__(f"Insufficient storage: {why}")


class UploadUrlUsed(ApiError):
    status = 409

    def __init__(self) -> None:
        super().__init__("this upload URL was used already: ask for a new one")


class TooManyStreams(ApiError):
    status = 429

    def __init__(self, username: str, limit: int) -> None:
        super().__init__(f"Too many event streams: {username} already has {limit} open /events sockets, the limit; close one first")


class ShuttingDown(ApiError):
    """Answered to every request once the coordinator is stopping: clients retry as after a
    lost connection (the worker backs off and tries again)."""

    status = 503

    def __init__(self) -> None:
        super().__init__("coordinator is shutting down")


class DatabaseConnectionLost(ApiError):
    """A pooled connection turned out closed (the database restarted or dropped it). The pool is
    renewed at once; the client retries, as after a lost connection of its own."""

    status = 503

    def __init__(self) -> None:
        super().__init__("the coordinator lost its database connection; retry")


class AlreadyExists(ApiError):
    status = 409

    def __init__(self, name: str) -> None:
        super().__init__(f"User or group with same name {name} already exists")
