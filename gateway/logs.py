"""Logging: JSON lines through python-json-logger (every line one object a log pipeline can parse), and the
context of the request being served, which the gateway's log lines carry. Light to import: the CLI
configures logging before any web or metrics module is loaded."""

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


class _RequestIdFilter(logging.Filter):
    """Adds the request id to every record logged while a request is served (state transitions included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


def logging_config(level: str, log_format: str) -> dict[str, Any]:
    """A logging.config.dictConfig for the gateway and uvicorn, applied in every worker process."""
    formatter: dict[str, Any]
    if log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "timestamp": False,
        }
    else:
        formatter = {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": _RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
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
