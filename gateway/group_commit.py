"""Group commit: the concurrent calls of one worker gathered into batches, one batch = one database statement
(claims) or one Redis script call per event (post-commit lease extensions).

A call waits in line; a batch takes what waits (at most `max_batch`, never two members with the same key:
the later one waits for a later batch) once the event loop has finished its current pass, so every call made
in that pass rides together. At most `max_in_flight` batches run at once; calls that arrive meanwhile form the
next. Each member gets its own outcome (a result or an exception) from the batch's runner. Nothing here knows
SQL or Redis: the runner sends the batch and decides each member's outcome (see Store.claim).
"""

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Histogram

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


@dataclass(slots=True)
class _Waiting(Generic[Item, Outcome]):
    item: Item
    future: "asyncio.Future[Outcome]"


class GroupCommitter(Generic[Item, Outcome]):
    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Outcome | BaseException]]],
        key: Callable[[Item], Hashable],
        *,
        max_batch: int,
        max_in_flight: int,
        batch_sizes: Histogram,
    ) -> None:
        self._run = run  # one outcome per member, in order; an exception is raised to that member alone
        self._key = key  # members of one batch have distinct keys
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._batch_sizes = batch_sizes
        self._waiting: list[_Waiting[Item, Outcome]] = []
        self._in_flight = 0
        self._starting = 0  # batches started that have not taken their members yet
        self._tasks: set[asyncio.Task[None]] = set()  # strong references until each batch ends

    async def submit(self, item: Item) -> Outcome:
        """The item's outcome once its batch has run. A caller cancelled before its batch left is dropped from
        the line; one cancelled later leaves its member in the batch, whose statement may still commit it (as
        a statement sent alone would)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(item, future))
        self._start_batches()
        return await future

    def _start_batches(self) -> None:
        # A batch is started only for members that the batches about to take theirs will leave in line.
        while self._in_flight < self._max_in_flight and len(self._waiting) > self._starting * self._max_batch:
            self._in_flight += 1
            self._starting += 1
            task = asyncio.get_running_loop().create_task(self._batch())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Waiting[Item, Outcome]]:
        batch: list[_Waiting[Item, Outcome]] = []
        keys: set[Hashable] = set()
        rest: list[_Waiting[Item, Outcome]] = []
        for waiting in self._waiting:
            if waiting.future.done():
                continue  # its caller was cancelled
            key = self._key(waiting.item)
            if len(batch) < self._max_batch and key not in keys:
                keys.add(key)
                batch.append(waiting)
            else:
                rest.append(waiting)
        self._waiting = rest
        return batch

    async def _batch(self) -> None:
        # Runs once the current pass of the event loop is over: every call made in that pass is in line.
        self._starting -= 1
        try:
            batch = self._take()
            if not batch:
                return
            self._batch_sizes.observe(len(batch))
            try:
                outcomes = await self._run([waiting.item for waiting in batch])
            except asyncio.CancelledError:  # the worker is shutting down: so are its callers
                for waiting in batch:
                    waiting.future.cancel()
                raise
            except Exception as exc:  # the runner's own failure (a bug): every member's
                outcomes = [exc] * len(batch)
            assert len(outcomes) == len(batch), "one outcome per member"
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if waiting.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    waiting.future.set_exception(outcome)
                else:
                    waiting.future.set_result(outcome)
        finally:
            self._in_flight -= 1
            self._start_batches()
