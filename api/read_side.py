"""The api's read model (DESIGN "The read side", ADR 0012): one SQLite file per api process,
projected from the ``orders`` bucket, answering ``GET /orders`` and ``GET /stats``.

It opens once the broker link is first up (the projector reads ``KV_orders``, which the link
makes sure exists) and stays open until the lifespan ends; a later broker outage only pauses the
projector, which resumes by itself from its checkpoint, and lists keep being answered from the
file meanwhile. A file that cannot be opened (a bad path, a corrupt file) is retried with
backoff and named in ``/readyz``'s answer; the api stays up. At shutdown the projector task is
cancelled after the batch it is writing commits, then both connections close, before the broker
link drains (the lifespan unwinds in reverse).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Final

from litestar import Litestar

from api.broker_link import BrokerLink
from api.responses import AnyRequest
from nodeapp.core.errors import ReadModelUnavailable
from nodeapp.readmodel.projector import Projector
from nodeapp.readmodel.service import ReadModel, open_read_model

log = logging.getLogger("orderflow.api.readmodel")

STATE_KEY: Final = "read_side"
MIN_BACKOFF: Final = 0.2
MAX_BACKOFF: Final = 5.0
OPEN_ERRORS: Final = (sqlite3.Error, OSError)


class ReadSide:
    """Routes ask it for the read model; it raises ``ReadModelUnavailable`` until it is open."""

    def __init__(self, link: BrokerLink, path: str) -> None:
        self.path = path
        self._link = link
        self._model: ReadModel | None = None
        self.problem: str | None = None  # why the file could not be opened, the last time

    def model(self) -> ReadModel:
        model = self._model
        if model is None:
            raise ReadModelUnavailable(
                self.problem or "the read model opens once the broker is reachable"
            )
        return model

    def projector(self) -> Projector | None:
        """The projector while the read model is open (for ``/readyz`` and metrics)."""
        return None if self._model is None else self._model.projector

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        """For ``Litestar(lifespan=[...])``, after the broker link's."""
        task = asyncio.create_task(self._run(), name="orderflow-api-read-model")
        task.add_done_callback(_report_crash)
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait([task])  # wait(), not await: our own cancellation stays ours

    async def _run(self) -> None:
        await self._link.linked()
        delay = MIN_BACKOFF
        while True:
            try:
                await self._hold()
            except OPEN_ERRORS as exc:
                self.problem = f"cannot open the read model {self.path}: {exc}"
                log.warning(
                    "%s; retrying in %.1fs",
                    self.problem,
                    delay,
                    extra={"event": "api.read_model_unavailable"},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _hold(self) -> None:
        """Open the file and follow the bucket until cancelled."""
        async with open_read_model(self.path, self._link.handles) as model:
            self._model, self.problem = model, None
            log.info(
                "read model open at checkpoint %d",
                model.projector.checkpoint,
                extra={"event": "api.read_model_open", "path": self.path},
            )
            try:
                await asyncio.Event().wait()  # hold it until cancelled
            finally:
                self._model = None


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the read model task failed; lists answer 503", exc_info=exc)


def read_side(request: AnyRequest) -> ReadSide:
    """The read side ``create_app`` put in the app's state."""
    side: ReadSide = request.app.state[STATE_KEY]
    return side
