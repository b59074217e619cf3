"""A Ctrl-C inside importlib: deferred only out of the module-lock callback that would swallow it, once.

Deferring it from every importlib frame put it off from import to import for as long as a
run imported lazily (1.7 s on a loaded machine, past the written output); an exception
raised in ``_get_module_lock``'s weakref callback ``cb`` is ignored by Python, so there alone
the signal is sent again once the callback returned.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import pytest

from optimizer import cli
from optimizer.errors import RECEIVED_SIGNALS, Interrupted, raise_if_interrupted

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "pthread_kill") or threading.current_thread() is not threading.main_thread(),
    reason="signal handlers and pthread_kill in the main thread",
)


def _frame(filename: str, name: str):
    """A frame whose code is ``name`` in ``filename`` (as importlib's frozen modules name theirs)."""
    namespace: dict = {"sys": sys}
    exec(compile(f"def {name}():\n    return sys._getframe()\n", filename, "exec"), namespace)
    return namespace[name]()


def _handler():
    return signal.getsignal(signal.SIGINT)


def test_a_signal_in_importlibs_other_frames_unwinds_at_once():
    with cli._signals_unwind(), pytest.raises(Interrupted):
        _handler()(signal.SIGINT, _frame("<frozen importlib._bootstrap_external>", "_path_stat"))
    assert RECEIVED_SIGNALS == [], "the next run starts uninterrupted"


def test_a_signal_in_the_module_lock_callback_comes_back_once_it_returned():
    with cli._signals_unwind():
        with pytest.raises(Interrupted):
            assert _handler()(signal.SIGINT, _frame("<frozen importlib._bootstrap>", "cb")) is None
            # a second Ctrl-C while the first waits to be sent again is the same interruption
            assert _handler()(signal.SIGINT, _frame("<frozen importlib._bootstrap>", "cb")) is None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.005)
        assert RECEIVED_SIGNALS == [signal.SIGINT]
        with pytest.raises(Interrupted):  # a save after a swallowed interruption places no output
            raise_if_interrupted()
        time.sleep(0.1)  # no second delivery is left pending
    assert RECEIVED_SIGNALS == [] and cli._RESEND_PENDING == []


def test_a_save_in_the_moment_a_deferred_signal_waits_places_no_output(tmp_path):
    from optimizer.model_io import write_atomically

    target = tmp_path / "report.json"
    with cli._signals_unwind():
        with pytest.raises(Interrupted):
            _handler()(signal.SIGINT, _frame("<frozen importlib._bootstrap>", "cb"))  # deferred: pending
            write_atomically(target, lambda path: open(path, "w").write("{}"), "report")
        assert not target.exists() and list(tmp_path.iterdir()) == []
        time.sleep(0.1)  # the deferred signal is not delivered again: the run already unwinds for it
    assert RECEIVED_SIGNALS == [] and cli._RESEND_PENDING == []


def test_a_sigterm_beside_a_deferred_sigint_is_the_one_delivered():
    with cli._signals_unwind():
        with pytest.raises(Interrupted) as stopped:
            _handler()(signal.SIGINT, _frame("<frozen importlib._bootstrap>", "cb"))
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, _frame("<frozen importlib._bootstrap>", "cb"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.005)
        assert stopped.value.signum == signal.SIGTERM and stopped.value.exit_code == 143
