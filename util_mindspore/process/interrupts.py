"""Ctrl-C (SIGINT) and SIGTERM end a training run at its next safe point, with exit codes 130 and 143.

MindSpore installs its own SIGINT handler whenever it runs a graph, and that handler ends the process with
SIGTERM: no `finally`, a half-written file, no word. So the entry scripts block both signals in every thread
before MindSpore starts its own (`block_signals()`, first thing, before importing MindSpore), and one thread
takes them with sigwait: the first asks the run to stop after the step or save under way (`check()` raises
StopRequested there, in every rank at the same step under msrun), a second stops it at once (KeyboardInterrupt
in the main thread; temporary files are still removed). Without block_signals (run() called from Python), signals
keep their usual meaning. This module must not import MindSpore.
"""
import _thread
import os
import signal
import threading
from typing import Callable, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequested(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.where = None  # the safe point it stopped at, e.g. "after epoch 3, step 20 of 100"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.signum]


class _Watcher:
    def __init__(self) -> None:
        self.signum = 0  # the first signal received, 0 while none
        self.thread = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._wait, name="retfound-signals", daemon=True)
            self.thread.start()

    def _wait(self) -> None:
        while True:
            signum = signal.sigwait(SIGNALS)
            if self.signum:  # a second signal: stop now
                _thread.interrupt_main()
            else:
                self.signum = int(signum)


_watcher = _Watcher()


def block_signals() -> None:
    """Take SIGINT and SIGTERM away from every thread started after this (call before importing MindSpore), and
    receive them in a watcher thread instead."""
    if os.environ.get("MS_ROLE") == "MS_SCHED":  # msrun's scheduler runs no training loop: signals end it as usual
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    _watcher.start()


def unblock_signals() -> None:
    """Undo block_signals in a child process (subprocess's preexec_fn): a child inherits the blocked mask, and one
    that does not take the signals itself (msrun's scheduler) would never see them."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def active() -> bool:
    return _watcher.thread is not None


def requested() -> int:
    """The signal number asking this process to stop, 0 for none."""
    return _watcher.signum


def check(agree: Optional[Callable[[int], int]] = None, where: Optional[str] = None) -> None:
    """Raise StopRequested at a safe point if a stop was asked for. `agree(signum) -> signum`: the ranks' common
    answer (under msrun every rank must stop at the same step, or the others would wait in a collective);
    `where`: the safe point in words (the stop line names it)."""
    if not active():
        return
    signum = agree(_watcher.signum) if agree is not None else _watcher.signum
    if signum:
        stop = StopRequested(signum)
        stop.where = where
        raise stop
