"""Library log records and warnings, kept off the terminal while greenmon shows progress.

transformers, optimum, onnxruntime, openvino, torch, urllib3 and the rest log through
Python's ``logging`` (several with a handler of their own on stderr that does not
propagate) and warn through ``warnings.warn``.  Written to the terminal, they land in the
middle of the ``\\r`` progress line.  While :func:`library_logs` is active, every such record
and warning instead goes to

- ``callback(level, message)``, level being the events table's "info", "warning" or
  "error": the daemon stores it as an event, and
- a log file, appended to, one line per record with logging's own level name (a
  traceback follows its line).

Terms:
- *terminal handler*: a ``logging.StreamHandler`` writing to stdout or stderr (by object,
  by file descriptor 1 or 2, or to any terminal).  Those are set aside while active;
  handlers writing elsewhere (a library's own log file, pytest's capture) are left alone.
- *adopting* a logger: setting aside its terminal handlers and letting its records
  propagate to the root logger, where the capture handler is.  A logger is adopted (with
  its ancestors) when it emits a record, through the log-record factory, before the record
  reaches any handler; so a library that configures its logger only when first imported
  (transformers, optimum: often inside an engine's worker thread, long after entry) is
  caught as surely as one imported before.  greenmon itself logs nothing, so in practice
  every record is a library's.

Everything is put back on exit.  Records and warnings may come from any thread; the
callback is called in the thread that logged, so it must be thread-safe itself (the
daemon's hands the event to its loop).  A callback that raises loses that one event,
never the library call: the record still reaches the log file.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from greenmon.errors import GreenmonError

# Called with (level, message) for each record and warning; level is the events table's
# "info" | "warning" | "error", so the daemon stores it as it is.
LogCallback = Callable[[str, str], None]


def event_level(levelno: int) -> str:
    """The events table's level for a logging level (DEBUG counts as info)."""
    if levelno >= logging.ERROR:
        return "error"
    return "warning" if levelno >= logging.WARNING else "info"


_TERMINAL_FDS = (1, 2)
_state_lock = threading.RLock()
_reentry = threading.local()


def _is_terminal_handler(handler: logging.Handler) -> bool:
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    stream = handler.stream
    if stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        return True
    try:
        return bool(stream.isatty()) or int(stream.fileno()) in _TERMINAL_FDS
    except (AttributeError, OSError, ValueError):  # closed, or not backed by a file
        return False


class _CaptureHandler(logging.Handler):
    """Sends each record to the callback and the log file."""

    def __init__(self, capture: _Capture) -> None:
        super().__init__(logging.NOTSET)
        self.capture = capture

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = f"{record.name}: {record.getMessage()}"
        except Exception:  # a library's bad format arguments: keep what can be kept
            message = f"{record.name}: {record.msg!r} {record.args!r}"
        detail = None
        if record.exc_info:
            detail = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.stack_info:
            detail = record.stack_info
        self.capture.emit(record.levelno, message, detail, record.created)


class _Capture:
    def __init__(self, callback: LogCallback, log_path: Path) -> None:
        self.callback = callback
        self.log_path = log_path
        self.handler = _CaptureHandler(self)
        self.file: TextIO | None = None
        self.file_lock = threading.Lock()
        # logger -> (its terminal handlers set aside, its propagate flag) for restoring
        self.adopted: dict[logging.Logger, tuple[list[logging.Handler], bool]] = {}
        self.previous_factory: Callable[..., logging.LogRecord] | None = None
        self.previous_showwarning: Any = None
        self.active = False

    # -- output ------------------------------------------------------------------------
    def emit(self, levelno: int, message: str, detail: str | None, created_s: float) -> None:
        level = logging.getLevelName(levelno)
        # A callback that logs (or warns) would come straight back here: its records go
        # to the file only.
        if getattr(_reentry, "busy", False):
            self.write(level, message, detail, created_s)
            return
        _reentry.busy = True
        try:
            self.write(level, message, detail, created_s)
            try:
                text = message if detail is None else f"{message}\n{detail}"
                self.callback(event_level(levelno), text)
            except Exception as error:  # the event is lost; the library call is not
                self.write(
                    "ERROR",
                    f"greenmon.liblog: the log callback failed: {error!r}",
                    None,
                    time.time(),
                )
        finally:
            _reentry.busy = False

    def write(self, level: str, message: str, detail: str | None, created_s: float) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created_s))
        line = f"{stamp}.{int(created_s % 1 * 1000):03d}Z {level} {message}\n"
        if detail:
            line += detail + "\n"
        with self.file_lock:
            if self.file is not None:
                self.file.write(line)
                self.file.flush()

    # -- loggers -------------------------------------------------------------------------
    def adopt(self, logger: logging.Logger) -> None:
        """Set aside ``logger``'s terminal handlers and let it propagate (caller holds the
        state lock).  Called again for a logger whose library added a handler since."""
        terminal = [h for h in logger.handlers if _is_terminal_handler(h)]
        if logger in self.adopted:
            if not terminal and logger.propagate:
                return
            set_aside, propagate = self.adopted[logger]
            self.adopted[logger] = (set_aside + terminal, propagate)
        else:
            self.adopted[logger] = (terminal, logger.propagate)
        for handler in terminal:
            logger.removeHandler(handler)
        if logger is not logging.root:
            logger.propagate = True

    def adopt_chain(self, name: str) -> None:
        """Adopt the logger ``name`` and every ancestor (a record's way to the root)."""
        with _state_lock:
            if not self.active:
                return
            logger: logging.Logger | None = logging.getLogger(name)
            while logger is not None:
                if logger.handlers or not logger.propagate or logger not in self.adopted:
                    self.adopt(logger)
                logger = logger.parent

    def record_factory(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        assert self.previous_factory is not None
        record = self.previous_factory(*args, **kwargs)
        self.adopt_chain(record.name)
        return record

    # -- warnings --------------------------------------------------------------------------
    def showwarning(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        self.emit(
            logging.WARNING,
            f"{category.__name__}: {message} ({filename}:{lineno})",
            None,
            time.time(),
        )

    # -- entry and exit ------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.file = self.log_path.open("a", encoding="utf-8")
        except OSError as error:
            raise GreenmonError(
                f"cannot append to the log file {self.log_path}: {error.strerror}. It is "
                "written beside the database; make that folder writable.",
                title="Log file not writable",
            ) from None
        with _state_lock:
            self.active = True
            self.adopt(logging.root)
            logging.root.addHandler(self.handler)
            self.previous_factory = logging.getLogRecordFactory()
            logging.setLogRecordFactory(self.record_factory)
            self.previous_showwarning = warnings.showwarning
            warnings.showwarning = self.showwarning

    def stop(self) -> None:
        with _state_lock:
            self.active = False
            if warnings.showwarning == self.showwarning:
                warnings.showwarning = self.previous_showwarning
            if logging.getLogRecordFactory() == self.record_factory:
                assert self.previous_factory is not None
                logging.setLogRecordFactory(self.previous_factory)
            logging.root.removeHandler(self.handler)
            for logger, (set_aside, propagate) in self.adopted.items():
                for handler in set_aside:
                    logger.addHandler(handler)
                logger.propagate = propagate
            self.adopted.clear()
        with self.file_lock:
            if self.file is not None:
                self.file.close()
                self.file = None


@contextlib.contextmanager
def library_logs(callback: LogCallback, log_path: str | Path) -> Iterator[None]:
    """While active, library log records and warnings go to ``callback(level, message)``
    and are appended to ``log_path``, never to the terminal; everything is restored on
    exit.  Contexts nest; leave them in the reverse order of entry."""
    capture = _Capture(callback, Path(log_path))
    capture.start()
    try:
        yield
    finally:
        capture.stop()
