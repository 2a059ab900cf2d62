"""greenmon.liblog: library log records and warnings go to a callback and a log file, never
to the terminal, from any thread, and everything is put back on exit."""

from __future__ import annotations

import io
import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenmon.errors import GreenmonError
from greenmon.liblog import library_logs


class Events:
    """The callback: records (level, message) from whichever thread calls it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, str]] = []

    def __call__(self, level: str, message: str) -> None:
        with self.lock:
            self.items.append((level, message))


@pytest.fixture
def library_logger() -> Iterator[logging.Logger]:
    """A logger set up the way transformers and optimum set theirs up: its own handler on
    stderr, not propagating."""
    logger = logging.getLogger("fakelib")
    logger.addHandler(StderrHandler())
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """``logging.StreamHandler()`` as a library makes it, but reading ``sys.stderr`` when it
    writes (capsys replaces stderr between a test's set-up and its call)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def run_in_thread(target: object) -> None:
    errors: list[BaseException] = []

    def wrapped() -> None:
        try:
            target()  # type: ignore[operator]
        except BaseException as error:  # handed to the test thread
            errors.append(error)

    thread = threading.Thread(target=wrapped)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if errors:
        raise errors[0]


def test_a_library_record_goes_to_the_callback_and_the_file_not_the_terminal(
    tmp_path: Path, library_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    events = Events()
    log = tmp_path / "run.duckdb.log"
    handlers_before = list(library_logger.handlers)
    with library_logs(events, log):
        library_logger.warning("Could not infer %s", "something")
        library_logger.info("converted in %d s", 3)
    assert capsys.readouterr().err == ""
    assert events.items == [
        ("warning", "fakelib: Could not infer something"),
        ("info", "fakelib: converted in 3 s"),
    ]
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("Z WARNING fakelib: Could not infer something")
    assert lines[1].endswith("Z INFO fakelib: converted in 3 s")
    # Put back: the library's own handler prints again, and nothing reaches the callback.
    assert library_logger.handlers == handlers_before
    assert library_logger.propagate is False
    library_logger.warning("after")
    assert "after" in capsys.readouterr().err
    assert len(events.items) == 2


def test_a_logger_a_library_configures_later_in_a_worker_thread_is_caught(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """transformers adds its stderr handler when first imported: inside an engine's worker
    thread, long after the capture began."""
    events = Events()
    logger = logging.getLogger("latelib.modeling")
    root_of_library = logging.getLogger("latelib")
    handler = logging.StreamHandler(sys.stderr)

    def import_and_log() -> None:
        root_of_library.addHandler(handler)
        root_of_library.propagate = False
        logger.warning("`torch_dtype` is deprecated")

    try:
        with library_logs(events, tmp_path / "log"):
            run_in_thread(import_and_log)
        assert events.items == [("warning", "latelib.modeling: `torch_dtype` is deprecated")]
        assert capsys.readouterr().err == ""
        # On exit the library's set-up is as it made it.
        assert root_of_library.handlers == [handler]
        assert root_of_library.propagate is False
    finally:
        root_of_library.removeHandler(handler)
        root_of_library.propagate = True


def test_warnings_from_any_thread_go_to_the_callback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = Events()
    log = tmp_path / "log"
    showwarning_before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with library_logs(events, log):
            run_in_thread(lambda: warnings.warn("padding side is right", UserWarning, stacklevel=1))
            warnings.warn("deprecated", DeprecationWarning, stacklevel=1)
    assert warnings.showwarning is showwarning_before
    assert capsys.readouterr().err == ""
    assert [level for level, _ in events.items] == ["warning", "warning"]
    assert events.items[0][1].startswith("UserWarning: padding side is right (")
    assert events.items[1][1].startswith("DeprecationWarning: deprecated (")
    assert __file__ in events.items[1][1]
    assert "UserWarning: padding side is right" in log.read_text()


def test_the_terminal_handlers_of_the_root_logger_are_set_aside_others_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = Events()
    terminal = logging.StreamHandler(sys.stderr)  # what logging.basicConfig() adds
    elsewhere_stream = io.StringIO()
    elsewhere = logging.StreamHandler(elsewhere_stream)  # a log file of the user's own
    logging.root.addHandler(terminal)
    logging.root.addHandler(elsewhere)
    try:
        with library_logs(events, tmp_path / "log"):
            logging.getLogger("somelib").error("disk full")
            assert terminal not in logging.root.handlers
        assert capsys.readouterr().err == ""
        assert "disk full" in elsewhere_stream.getvalue()
        assert events.items == [("error", "somelib: disk full")]
        assert terminal in logging.root.handlers and elsewhere in logging.root.handlers
    finally:
        logging.root.removeHandler(terminal)
        logging.root.removeHandler(elsewhere)


def test_a_traceback_follows_its_record(tmp_path: Path, library_logger: logging.Logger) -> None:
    events = Events()
    log = tmp_path / "log"
    with library_logs(events, log):
        try:
            raise ValueError("bad shape")
        except ValueError:
            library_logger.exception("export failed")
    ((level, message),) = events.items
    assert level == "error"
    assert message.startswith("fakelib: export failed\nTraceback (most recent call last):")
    assert message.rstrip().endswith("ValueError: bad shape")
    text = log.read_text()
    assert "export failed" in text and "ValueError: bad shape" in text


def test_a_failing_callback_loses_the_event_not_the_library_call(
    tmp_path: Path, library_logger: logging.Logger
) -> None:
    def broken(level: str, message: str) -> None:
        raise RuntimeError("event stream closed")

    log = tmp_path / "log"
    with library_logs(broken, log):
        library_logger.warning("still here")  # must not raise
    text = log.read_text()
    assert "WARNING fakelib: still here" in text
    assert "the log callback failed: RuntimeError('event stream closed')" in text


def test_a_callback_that_logs_does_not_loop(tmp_path: Path, library_logger: logging.Logger) -> None:
    calls: list[str] = []

    def chatty(level: str, message: str) -> None:
        calls.append(message)
        logging.getLogger("duckdb.fake").warning("while storing %s", message)

    log = tmp_path / "log"
    with library_logs(chatty, log):
        library_logger.warning("one")
    assert calls == ["fakelib: one"]
    assert "while storing fakelib: one" in log.read_text()


def test_records_from_many_threads_all_arrive(
    tmp_path: Path, library_logger: logging.Logger
) -> None:
    events = Events()
    log = tmp_path / "log"
    threads_n, records_n = 8, 200

    def chatter(index: int) -> None:
        for number in range(records_n):
            library_logger.warning("thread %d record %d", index, number)

    with library_logs(events, log):
        threads = [threading.Thread(target=chatter, args=(i,)) for i in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert len(events.items) == threads_n * records_n
    assert len(set(events.items)) == threads_n * records_n
    assert len(log.read_text().splitlines()) == threads_n * records_n


def test_levels_are_the_events_tables_and_the_file_keeps_logging_s(
    tmp_path: Path, library_logger: logging.Logger
) -> None:
    events = Events()
    log = tmp_path / "log"
    library_logger.setLevel(logging.DEBUG)
    with library_logs(events, log):
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, 50):
            library_logger.log(level, "at %d", level)
    assert [level for level, _ in events.items] == ["info", "info", "warning", "error", "error"]
    names = [line.split()[1] for line in log.read_text().splitlines()]
    assert names == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def test_the_log_file_is_appended_to(tmp_path: Path, library_logger: logging.Logger) -> None:
    log = tmp_path / "log"
    log.write_text("earlier run\n")
    with library_logs(Events(), log):
        library_logger.warning("this run")
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier run" and lines[1].endswith("WARNING fakelib: this run")


def test_an_unwritable_log_file_is_refused_before_anything_changes(tmp_path: Path) -> None:
    factory = logging.getLogRecordFactory()
    showwarning = warnings.showwarning
    handlers = list(logging.root.handlers)
    with (
        pytest.raises(GreenmonError, match="cannot append to the log file"),
        library_logs(Events(), tmp_path / "no-such-folder" / "log"),
    ):
        pass
    assert logging.getLogRecordFactory() is factory
    assert warnings.showwarning is showwarning
    assert logging.root.handlers == handlers
