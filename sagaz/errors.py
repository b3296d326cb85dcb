"""The one exception hierarchy of sagaz.

Every error the library raises on purpose derives from :class:`SagazError`. Subclasses carry the
structured fields a caller needs to react (``saga_id``, ``step``) and keep the original exception
as ``__cause__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sagaz.engine.types import SagaStatus

__all__ = [
    "ConfigurationError",
    "LeaseLostError",
    "OperatorError",
    "SagaDefinitionError",
    "SagaFailedError",
    "SagaNotFoundError",
    "SagaTimeoutError",
    "SagazError",
    "SignalRefusedError",
    "StepTimeoutError",
    "StorageError",
    "WaitTimeoutError",
]


class SagazError(Exception):
    """Root of every error raised by sagaz."""


class ConfigurationError(SagazError):
    """Configuration is missing or malformed; the message says what to change."""


class SagaDefinitionError(SagazError):
    """A saga definition (or the input it was given) is invalid. Raised before any step runs."""

    def __init__(self, message: str, *, saga_name: str | None = None, step: str | None = None):
        super().__init__(message)
        self.saga_name = saga_name
        self.step = step


class StorageError(SagazError):
    """The storage backend failed or refused an operation.

    ``refused`` is True when the storage refused the data written (a value or a constraint):
    the storage itself works, and the same write would be refused again.
    ``connection_rejected`` is True when the database turned the connection down (credentials,
    role, database name): nothing changes until the configuration does.
    """

    def __init__(
        self, message: str, *, refused: bool = False, connection_rejected: bool = False
    ):
        super().__init__(message)
        self.refused = refused
        self.connection_rejected = connection_rejected


class SagaNotFoundError(StorageError):
    """No saga with this id exists in the storage."""

    def __init__(self, saga_id: str):
        super().__init__(f"no saga with id {saga_id!r}")
        self.saga_id = saga_id


class WaitTimeoutError(SagazError):
    """A durable wait's timeout passed before its signal arrived (the wait step fails)."""

    def __init__(self, step: str, signal: str | None, timeout: float):
        what = f"signal {signal!r}" if signal else "its timer"
        super().__init__(f"wait {step!r} got no {what} within {timeout:g}s")
        self.step = step
        self.signal = signal
        self.timeout = timeout


class SignalRefusedError(SagazError):
    """A signal was sent to a saga that has finished: nothing would ever consume it."""

    def __init__(self, saga_id: str, status: SagaStatus):
        super().__init__(
            f"saga {saga_id} is {status.value}: it takes no more signals (signals are for "
            "sagas that are still running or waiting)")
        self.saga_id = saga_id
        self.status = status


class LeaseLostError(StorageError):
    """Another executor took over this saga (our lease expired); we must stop touching it."""

    def __init__(self, saga_id: str):
        super().__init__(
            f"lease on saga {saga_id} was lost: another executor recovered it; "
            "this executor stops without writing further state"
        )
        self.saga_id = saga_id


class StepTimeoutError(SagazError, TimeoutError):
    """A step (or its compensation) did not finish within its ``timeout``."""

    def __init__(self, step: str, timeout: float):
        super().__init__(f"step {step!r} timed out after {timeout:g}s")
        self.step = step
        self.timeout = timeout


class SagaTimeoutError(SagazError, TimeoutError):
    """The saga as a whole did not finish its forward path within the saga-level ``timeout``."""

    def __init__(self, saga_name: str, timeout: float):
        super().__init__(f"saga {saga_name!r} timed out after {timeout:g}s")
        self.saga_name = saga_name
        self.timeout = timeout


class SagaFailedError(SagazError):
    """A saga did not complete: it was compensated (or compensation itself failed).

    ``__cause__`` is the exception of the failed step, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        saga_id: str,
        saga_name: str,
        status: SagaStatus,
        failed_step: str | None,
        compensation_errors: dict[str, BaseException] | None = None,
        error: str | None = None,
    ):
        super().__init__(message)
        self.saga_id = saga_id
        self.saga_name = saga_name
        self.status = status
        self.failed_step = failed_step
        self.compensation_errors: dict[str, BaseException] = dict(compensation_errors or {})
        self.error = error


class OperatorError(SagazError):
    """An operator verb (cancel, retry, resume) cannot apply to the saga as it is now; the message
    says why and what would work instead. ``status`` is the saga's status, when it exists."""

    def __init__(self, message: str, *, saga_id: str, status: SagaStatus | None = None):
        super().__init__(message)
        self.saga_id = saga_id
        self.status = status
