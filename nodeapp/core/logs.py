"""Structured logging: one JSON object a line (machines) or a short readable line (``up``).

Fields passed with ``extra={...}`` (event, order_id, step, node_id, attempt, ...) land in the
JSON line; the current trace and span ids are added when a span is active.

Cheap at the defaults (INFO, a line per order transition): a record is encoded once, in the
caller, by msgspec, and queued (``QueueHandler``); a thread (``QueueListener``) writes the
lines, batched (it wakes at most every ``GATHER`` seconds while lines flow), so the event loop
never waits on stderr (a slow pipe or terminal) and a line costs no thread switch. Records
skip what no formatter here prints (the caller's frame, thread and process names), and a
disabled level costs one comparison (``Logger.isEnabledFor``).
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import IO, Any, Final

import msgspec
from opentelemetry import trace

# Attributes every LogRecord has; anything else came from ``extra`` and is ours to print.
_RESERVED: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "color_message",
}
_encoder = msgspec.json.Encoder()
FLUSH_TIMEOUT: Final = 5.0
GATHER: Final = 0.02  # seconds the writer lets lines gather before it writes them
MAX_BATCH: Final = 1000  # lines written at most in one write


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED}


def _trace_ids() -> dict[str, str]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


class _Seconds:
    """``2026-11-25T15:14:03`` for one UTC second, kept while lines fall in that second."""

    def __init__(self) -> None:
        self.last: tuple[int, str] = (-1, "")

    def stamp(self, created: float) -> str:
        """``created`` as ISO-8601 UTC with microseconds and a ``Z``."""
        second, micros = divmod(round(created * 1_000_000), 1_000_000)
        last = self.last
        if last[0] != second:
            last = self.last = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{last[1]}.{micros:06d}Z"


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds()

    def format(self, record: logging.LogRecord) -> str:
        return self.encode(record).decode()

    def encode(self, record: logging.LogRecord) -> bytes:
        """The record as one JSON object, encoded."""
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return self.encode_fields(
            record.created, record.levelname, record.name, record.getMessage(), _extras(record), exc
        )

    def encode_fields(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        fields: dict[str, Any],
        exc: str | None = None,
    ) -> bytes:
        """One line's JSON object from its parts, encoded (``LineQueue.put`` comes here
        without a LogRecord)."""
        line: dict[str, Any] = {
            "ts": self._seconds.stamp(created),
            "level": level.lower(),
            "logger": logger,
            "msg": message,
        }
        line.update(_trace_ids())
        line.update(fields)
        if exc is not None:
            line["exc"] = exc
        return _encoder.encode(line)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items() if k != "event")
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            text += f"  [{extras}]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def encode_line(formatter: logging.Formatter, record: logging.LogRecord) -> bytes:
    """The record as the bytes of one line, newline included."""
    if isinstance(formatter, JsonFormatter):
        return formatter.encode(record) + b"\n"
    return formatter.format(record).encode(errors="replace") + b"\n"


class LineWriter(logging.handlers.QueueListener):
    """The thread that writes queued lines to ``stream``: what has gathered, in one write."""

    def __init__(self, lines: queue.SimpleQueue[Any], stream: IO[bytes]) -> None:
        super().__init__(lines)
        self.lines = lines
        self.stream = stream
        self.running = False
        self._batch: list[bytes] = []

    def start(self) -> None:
        super().start()
        self.running = True

    def stop(self) -> None:
        self.running = False
        super().stop()
        self._write_batch()

    def dequeue(self, block: bool) -> Any:
        """The next line; when none is queued, first let lines gather for ``GATHER`` seconds, so
        a busy process wakes this thread a few times a second, not once a line."""
        if block and self.lines.empty():
            time.sleep(GATHER)
        return self.lines.get(block)

    def handle(self, record: Any) -> None:
        if isinstance(record, threading.Event):  # a flush marker: all before it is written
            self._write_batch()
            record.set()
            return
        self._batch.append(record)
        if self.lines.empty() or len(self._batch) >= MAX_BATCH:
            self._write_batch()

    def _write_batch(self) -> None:
        """One write and flush for the lines gathered (stderr is often unbuffered)."""
        if not self._batch:
            return
        data = b"".join(self._batch)
        self._batch.clear()
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: nowhere left to say so
            return


class LineQueue(logging.handlers.QueueHandler):
    """Encodes each record where it is logged (the caller's context holds its trace ids) and
    queues the bytes for ``writer``; ``flush`` waits until it has written what was queued."""

    def __init__(self, writer: LineWriter, formatter: logging.Formatter) -> None:
        super().__init__(writer.lines)
        self.writer = writer
        self.setFormatter(formatter)

    def prepare(self, record: logging.LogRecord) -> Any:
        assert self.formatter is not None
        return encode_line(self.formatter, record)

    def emit(self, record: logging.LogRecord) -> None:
        if self.writer.running:
            super().emit(record)
            return
        try:  # the writer has stopped (the process is exiting): write it here
            self.writer.stream.write(self.prepare(record))
            self.writer.stream.flush()
        except (OSError, ValueError):
            return

    def flush(self) -> None:
        if self.writer.running:
            written = threading.Event()
            self.writer.lines.put_nowait(written)
            written.wait(FLUSH_TIMEOUT)

    def put(self, level: int, logger: str, message: str, fields: dict[str, Any]) -> None:
        """Queue a JSON line without building a LogRecord (``direct_lines`` says when)."""
        formatter = self.formatter
        assert isinstance(formatter, JsonFormatter)
        line = formatter.encode_fields(
            time.time(), logging.getLevelName(level), logger, message, fields
        )
        self.writer.lines.put_nowait(line + b"\n")


def direct_lines(logger: logging.Logger) -> LineQueue | None:
    """The JSON line queue, when a record of ``logger`` would reach it and nothing else (no
    handler, filter or stop on the way to the root, whose one handler it is): the hot path's
    lines (one per order transition) then skip building a LogRecord. None otherwise (console
    format, a test capturing records, a handler added by someone): log as usual."""
    handler = _direct
    if handler is None or not handler.writer.running or handler.filters:
        return None
    node: logging.Logger | None = logger
    while node is not None and node.parent is not None:  # up to, not including, the root
        if node.handlers or node.filters or not node.propagate:
            return None
        node = node.parent
    root = logging.root
    if root.filters or len(root.handlers) != 1 or root.handlers[0] is not handler:
        return None
    return handler


_writer: LineWriter | None = None
_direct: LineQueue | None = None  # the JSON line queue, while it is the root's handler


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger to stderr in the chosen format, through the writer thread;
    idempotent (a second call replaces the first's thread)."""
    global _writer, _direct
    stop_logging()
    _writer = LineWriter(queue.SimpleQueue(), sys.stderr.buffer)
    handler = LineQueue(_writer, JsonFormatter() if fmt == "json" else ConsoleFormatter())
    _direct = handler if fmt == "json" else None
    _writer.start()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Nothing printed needs the caller's frame, thread or process: do not collect them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # nats-py logs every reconnect attempt at ERROR; our callbacks report state changes instead.
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)


def stop_logging() -> None:
    """Write what is queued and stop the writer thread (at exit, or before reconfiguring);
    lines logged after that are written by the caller."""
    global _writer, _direct
    _direct = None
    if _writer is not None:
        _writer.stop()
        _writer = None


atexit.register(stop_logging)
