"""Keeping ``orderflow up``'s children running: a crashed one is logged and restarted.

The product exists so that a node dies and the rest carry on; on one machine that also means the
dead process comes back. A child that exits non-zero or by a signal is restarted after a backoff
(0.5 s doubling to 10 s, back to 0.5 s once a run lasted ``STABLE_AFTER``), so a process that
cannot start does not spin. A node that exits 0 was drained on purpose (``orderflow node drain``,
``POST /stop``) and stays gone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Collection
from typing import Final

from nodeapp.local.supervisor import Child, Supervisor, describe_exit, exit_signal

log = logging.getLogger("orderflow.up")

FIRST_DELAY: Final = 0.5
MAX_DELAY: Final = 10.0
STABLE_AFTER: Final = 30.0


class Backoff:
    """Restart delays for one child: doubling up to ``ceiling``, reset after a stable run."""

    def __init__(
        self, first: float = FIRST_DELAY, ceiling: float = MAX_DELAY, stable: float = STABLE_AFTER
    ) -> None:
        self.first, self.ceiling, self.stable = first, ceiling, stable
        self.upcoming = first

    def delay(self, ran_for: float) -> float:
        """The pause before the next start, given how long the last run lasted."""
        if ran_for >= self.stable:
            self.upcoming = self.first
        delay = self.upcoming
        self.upcoming = min(self.upcoming * 2, self.ceiling)
        return delay


async def exited(child: Child) -> int:
    """The child's exit code, awaited without polling.

    A daemon thread blocks in ``waitpid`` for it; the default executor is not used, since
    the event loop's shutdown waits for that executor and a child outlives the loop until the
    supervisor's synchronous stop.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def report(code: int) -> None:
        if not done.done():  # cancelled: nobody waits for this exit any more
            done.set_result(code)

    def wait() -> None:
        code = child.proc.wait()
        try:
            loop.call_soon_threadsafe(report, code)
        except RuntimeError:  # the loop closed first: ``up`` is stopping and reaps it itself
            return

    threading.Thread(target=wait, name=f"wait-{child.name}", daemon=True).start()
    return await done


class Keeper:
    """Restarts the supervisor's children when they crash, until cancelled."""

    def __init__(self, supervisor: Supervisor, final_clean_exit: Collection[str]) -> None:
        """``final_clean_exit``: roles whose exit code 0 means "left on purpose"."""
        self.supervisor = supervisor
        self.final_clean_exit = final_clean_exit

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for child in list(self.supervisor.children):
                group.create_task(self.keep(child), name=f"keep-{child.name}")

    async def keep(self, child: Child) -> None:
        backoff = Backoff()
        while True:
            code = await exited(child)
            if code == 0 and child.role in self.final_clean_exit:
                log.info(
                    "%s (pid %d) drained and left; not restarting it",
                    child.name,
                    child.pid,
                    extra={"event": "up.child_left", "child": child.name, "pid": child.pid},
                )
                return
            delay = backoff.delay(child.uptime)
            _log_crash(child, code, delay)
            await asyncio.sleep(delay)  # the backoff itself, not a wait for a condition
            child = self.supervisor.restart(child)
            log.info(
                "%s restarted (pid %d)",
                child.name,
                child.pid,
                extra={"event": "up.child_restarted", "child": child.name, "pid": child.pid},
            )


def _log_crash(child: Child, code: int, delay: float) -> None:
    extra: dict[str, object] = {
        "event": "up.child_exited",
        "child": child.name,
        "pid": child.pid,
        "exit_code": code,
        "restart_in": delay,
    }
    if (name := exit_signal(code)) is not None:
        extra["signal"] = name
    log.warning(
        "%s (pid %d) exited unexpectedly (%s); restarting in %gs",
        child.name,
        child.pid,
        describe_exit(code),
        delay,
        extra=extra,
    )
