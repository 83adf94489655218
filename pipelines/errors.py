"""One exception type per failure family. The CLI turns any `NlpopsError` into one line and exit code 2."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit else line


class NlpopsError(Exception):
    """Base class for errors a user can fix; never shown with a traceback."""

    exit_code = 2


class ConfigError(NlpopsError):
    """params.yaml or a --set override is invalid."""


class DataError(NlpopsError):
    """A data file cannot be read or lacks what the task needs."""


class DataValidationError(NlpopsError):
    """The Great Expectations suite failed on a data batch."""

    def __init__(self, message: str, report_path: str | None = None) -> None:
        super().__init__(message)
        self.report_path = report_path


class ModelLoadError(NlpopsError):
    """The pre-trained model folder is missing or unusable."""


class ParityError(NlpopsError):
    """The ONNX model does not reproduce the PyTorch model's outputs."""


class RegistryError(NlpopsError):
    """The MLflow registry refused an operation or holds no such model/alias."""


class StageInputError(NlpopsError):
    """A stage was asked to run before the stage it depends on produced its outputs."""


class StateDirError(NlpopsError):
    """The state dir (or another output folder) cannot be written: permissions, read-only or full disk."""


class ServiceError(NlpopsError):
    """A tracking or orchestration server cannot be reached, started or stopped."""


class RunInProgressError(NlpopsError):
    """Another run of the same project (same artifacts dir) holds the run lock and run.on_conflict is fail.

    Exit code 75 (EX_TEMPFAIL: try again later), so a wrapper script can tell "busy" from "broken"."""

    exit_code = 75

    def __init__(self, message: str, holder: str = "") -> None:
        super().__init__(message)
        self.holder = holder


class MixedRunError(NlpopsError):
    """The artifacts a registration would combine (training run, metrics, gate, ONNX) come from different runs."""
