"""Group commit: the writes of one event-loop turn share one COMMIT.

A COMMIT per station message was the largest cost of a busy server. Here the store stays in an
open transaction; the first write of a turn schedules one COMMIT for the end of the turn, and
whoever must acknowledge something (a reply to a station, an API response) first awaits
`durable()`, which returns once a COMMIT holding its writes has run.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("edrvctl.store")


class GroupCommit:
    def __init__(self, store) -> None:
        self.store = store
        self._waiters: list[asyncio.Future] = []
        self._scheduled = False
        self.commits = 0
        store.autocommit = False
        store.on_write = self.schedule

    def schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._commit)

    def _commit(self) -> None:
        self._scheduled = False
        waiters, self._waiters = self._waiters, []
        try:
            self.store.commit()
            self.commits += 1
        except Exception as e:  # e.g. disk full: nobody gets an acknowledgement
            log.error("commit failed: %s", e)
            for w in waiters:
                if not w.done():
                    w.set_exception(e)
            return
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def durable(self) -> None:
        """Wait until everything written so far is committed (raises if it could not be)."""
        if not self.store.has_pending():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.schedule()
        await fut

    def close(self) -> None:
        self.store.commit()
        self.store.autocommit = True
        self.store.on_write = None
