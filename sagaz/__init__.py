"""sagaz: durable sagas (multi-step transactions with compensation) on SQLite or PostgreSQL."""

from sagaz.config import SagaConfig, configure, get_config, shutdown
from sagaz.engine.context import SagaContext
from sagaz.engine.definition import Saga, action, compensate, register
from sagaz.engine.handle import SagaHandle
from sagaz.engine.listeners import SagaListener
from sagaz.engine.operator import cancel, check_versions, resume, retry
from sagaz.engine.recovery import RecoveryReport, recover
from sagaz.engine.retry import RetryPolicy
from sagaz.engine.types import FailureStrategy, SagaResult, SagaStatus, StepRecord, StepStatus
from sagaz.engine.wait_steps import wait
from sagaz.engine.waits import signal
from sagaz.errors import (
    ConfigurationError,
    LeaseLostError,
    OperatorError,
    SagaDefinitionError,
    SagaFailedError,
    SagaNotFoundError,
    SagaTimeoutError,
    SagazError,
    SignalRefusedError,
    StepTimeoutError,
    StorageError,
    WaitTimeoutError,
)
from sagaz.worker import Worker, WorkerListener

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "FailureStrategy",
    "LeaseLostError",
    "OperatorError",
    "RecoveryReport",
    "RetryPolicy",
    "Saga",
    "SagaConfig",
    "SagaContext",
    "SagaDefinitionError",
    "SagaFailedError",
    "SagaHandle",
    "SagaListener",
    "SagaNotFoundError",
    "SagaResult",
    "SagaStatus",
    "SagaTimeoutError",
    "SagazError",
    "SignalRefusedError",
    "StepRecord",
    "StepStatus",
    "StepTimeoutError",
    "StorageError",
    "WaitTimeoutError",
    "Worker",
    "WorkerListener",
    "__version__",
    "action",
    "cancel",
    "check_versions",
    "compensate",
    "configure",
    "get_config",
    "recover",
    "register",
    "resume",
    "retry",
    "shutdown",
    "signal",
    "wait",
]
