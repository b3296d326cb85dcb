import sagaz


def test_public_names_are_pinned() -> None:
    """The public API is a contract: adding or removing a name must be a deliberate change."""
    assert sorted(sagaz.__all__) == sorted([
        "ConfigurationError", "FailureStrategy", "LeaseLostError", "OperatorError",
        "RecoveryReport", "RetryPolicy", "Saga", "SagaConfig", "SagaContext",
        "SagaDefinitionError", "SagaFailedError", "SagaHandle", "SagaListener",
        "SagaNotFoundError", "SagaResult", "SagaStatus", "SagaTimeoutError", "SagazError",
        "SignalRefusedError", "StepRecord", "StepStatus", "StepTimeoutError", "StorageError",
        "WaitTimeoutError", "Worker", "WorkerListener", "__version__", "action", "cancel",
        "check_versions", "compensate", "configure", "get_config", "recover", "register", "resume",
        "retry", "shutdown", "signal", "wait",
    ])
    for name in sagaz.__all__:
        assert hasattr(sagaz, name), name


def test_every_error_derives_from_one_root() -> None:
    for name in sagaz.__all__:
        obj = getattr(sagaz, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, sagaz.SagazError), name


def test_statuses() -> None:
    assert [s.value for s in sagaz.SagaStatus] == [
        "PENDING", "RUNNING", "WAITING", "COMPENSATING", "COMPLETED", "COMPENSATED", "FAILED"]
    assert {s for s in sagaz.SagaStatus if s.is_final} == {
        sagaz.SagaStatus.COMPLETED, sagaz.SagaStatus.COMPENSATED, sagaz.SagaStatus.FAILED}
