"""Logging: JSON lines through python-json-logger with msgspec (every line one object a log pipeline can
parse), and the context of the request being served, which the gateway's log lines carry. Light to
import: the CLI configures logging before any web or metrics module is loaded."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class RequestContext:
    request_id: str
    hold_id: str | None = None
    layer: str | None = None  # which layer decided: "redis" (turned away there) or "postgres"


_current: ContextVar[RequestContext | None] = ContextVar("gateway_request", default=None)


def note_request(*, hold_id: str | None = None, layer: str | None = None) -> None:
    """Record facts about the request being served, for its log line. Outside a request, does nothing."""
    context = _current.get()
    if context is None:
        return
    if hold_id is not None:
        context.hold_id = hold_id
    if layer is not None:
        context.layer = layer


def current_request_id() -> str | None:
    context = _current.get()
    return None if context is None else context.request_id


@contextmanager
def serving(context: RequestContext) -> Iterator[RequestContext]:
    """Make `context` the current request's while the block runs."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def install_request_id_factory() -> None:
    """Give every log record the id of the request being served (None outside one), whichever handler
    formats it. Idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "adds_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = current_request_id()
        return record

    factory.adds_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def logging_config(level: str, log_format: str) -> dict[str, Any]:
    """A logging.config.dictConfig for the gateway and uvicorn, applied in every worker process."""
    formatter: dict[str, Any]
    if log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.msgspec.MsgspecFormatter",
            "fmt": "%(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
            "timestamp": "time",  # ISO 8601, UTC
        }
    else:
        formatter = {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    install_request_id_factory()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            # uvicorn's own loggers propagate to the root handler, so they are JSON too.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }
