"""User-facing errors: one class per kind of mistake, each with a one-line message.

The CLI prints ``str(error)`` and exits with ``error.exit_code``; it never shows a
traceback for these. Bugs are not ``GraphoptError`` and keep their tracebacks.
"""

from __future__ import annotations


class GraphoptError(Exception):
    """A mistake in what the user gave us (file, flag, inputs), not a bug in graphopt."""

    exit_code = 2


class ModelFileError(GraphoptError):
    """The model file is missing, unreadable, not ONNX, or truncated."""


class UnsupportedModelError(GraphoptError):
    """The model uses an opset or operator domain that graphopt cannot check."""


class InvalidModelError(GraphoptError):
    """onnx's checker (or ONNX Runtime) rejects the model as given."""


class GeneratedInputsRefusedError(InvalidModelError):
    """ONNX Runtime cannot run the input model on the inputs verification generated (a length past a table the
    model reads, a size it fixes without declaring it): shorter generated inputs may run."""


class GeneratedOutputsConstantError(GeneratedInputsRefusedError):
    """Every output of the input model is constant on the inputs verification generated (a speech front end's
    features over 128 audio samples, less than one frame, are zeros): nothing would be verified on them; longer
    generated inputs may do."""


class InputSpecError(GraphoptError):
    """Verification inputs cannot be built: missing shape, bad --dim, bad .npz."""


class OutputPathError(GraphoptError):
    """The output path cannot be written safely (e.g. it would overwrite the input)."""


class PassSelectionError(GraphoptError):
    """An unknown pass name, passes that do not combine, or a pass that cannot run on the chosen target."""


class OptionError(GraphoptError):
    """An unknown option, or an option value out of range."""


class RuntimeMissingError(GraphoptError):
    """ONNX Runtime (or the requested execution provider) is not installed."""


class RuntimeRefusedError(GraphoptError):
    """ONNX Runtime refused to load or run a model (raised only by ``optimizer.runtime``, from ORT's own errors).

    Inside the pipeline it means "this rewrite is unusable" (rolled back) or "this
    subgraph cannot be probed" (the fusion refuses); reaching the CLI, it is one line.
    ``reason`` is ORT's own message, on one line.
    """

    def __init__(self, action: str, reason: str) -> None:
        super().__init__(f"ONNX Runtime cannot {action}: {reason}")
        self.action, self.reason = action, reason


def one_line(error: BaseException, limit: int = 400) -> str:
    """An exception's message as one line (onnx and ORT spread one sentence over several)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the CLI ran (raised by its signal handler).

    A ``BaseException``, so no ``except Exception`` in a pass or the pipeline stops it:
    the program unwinds, its ``with`` blocks remove temporary folders and staged output
    files on the way, and the CLI prints one line and exits ``128 + signum`` (130 for
    SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum


# Signals the CLI's handler (``optimizer.cli._signals_unwind``) turned into ``Interrupted``; empty outside the CLI.
RECEIVED_SIGNALS: list[int] = []
# A signal the handler deferred (out of importlib's module-lock callback) and will deliver again shortly.
PENDING_SIGNALS: list[int] = []


def raise_if_interrupted() -> None:
    """``Interrupted`` again where a signal's exception was swallowed (a ``__del__`` or weakref callback ignores
    it, and the run went on), or now for a signal deferred and not yet delivered again: called just before an
    output is renamed into place, so that an interrupted run never leaves one."""
    if PENDING_SIGNALS and not RECEIVED_SIGNALS:  # received all the same: the re-sent one is then ignored
        RECEIVED_SIGNALS.append(PENDING_SIGNALS[0])
    PENDING_SIGNALS.clear()
    if RECEIVED_SIGNALS:
        raise Interrupted(RECEIVED_SIGNALS[0])
