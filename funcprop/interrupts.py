"""Ctrl-C and SIGTERM stop a command the same way: SIGTERM raises :class:`Terminated`, a
KeyboardInterrupt, wherever the main thread is."""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that both stop a command the same way."""


SIGTERM_RETRY_S = 2.0  # how often a SIGTERM is raised again until the command has stopped


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM raises :class:`Terminated` for the duration; the previous handler comes back after.

    Python runs a signal handler between any two bytecodes, and an exception raised in a
    ``__del__`` or a weakref callback (JAX has many) is printed and dropped. So after the
    first SIGTERM a thread raises it again every :data:`SIGTERM_RETRY_S` seconds until
    the command has stopped: one signal is enough, wherever it lands. A dropped raise is
    kept off stderr (``sys.unraisablehook``), since the next one stops the command.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    requested, stopped = threading.Event(), threading.Event()

    def again():
        while not stopped.wait(SIGTERM_RETRY_S):
            _thread.interrupt_main(signal.SIGTERM)

    def terminate(signum, frame):
        if not requested.is_set():
            requested.set()
            threading.Thread(target=again, name="funcprop-sigterm", daemon=True).start()
        raise Terminated

    def unraisable(info):  # the dropped raise is retried: not worth a traceback on stderr
        if not isinstance(info.exc_value, Terminated):
            previous_hook(info)

    previous, previous_hook = signal.signal(signal.SIGTERM, terminate), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        stopped.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        sys.unraisablehook = previous_hook
