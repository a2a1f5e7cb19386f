"""Scheduler: :class:`BudgetExtension`, the ledger of LM budgets and rate limits of the cluster.

Every LM call under a ``dspex.Budget`` or a ``rate_limit``
(:mod:`foundation_dask.dspex.lm.budget`) that reaches the model asks this extension
first, with one round trip (``foundation_budget_reserve``): the calls of a budget are
counted here, in the scheduler's memory, so a cap holds across every worker and
thread, also for workers that join later. The reply refuses the call, or grants it
with the time to wait before it starts (the rate limit's slot). What the call used
comes back on the batched stream (``foundation_budget_record``), in order with the
task's result. ``foundation_budget_info`` reads the ledger.
"""

from __future__ import annotations

import contextlib
from typing import Any

from foundation_dask.core.plugin import SchedulerExtension
from foundation_dask.dspex.lm.budget import Ledger


class BudgetExtension(SchedulerExtension):
    """Budgets by id and rate-limit windows by key, in one
    :class:`~foundation_dask.dspex.lm.budget.Ledger`."""

    name = "lm-budget"

    def __init__(self, scheduler: Any, plugin: Any) -> None:
        super().__init__(scheduler, plugin)
        self.ledger = Ledger()

    def handlers(self) -> dict[str, Any]:
        return {"foundation_budget_reserve": self.reserve,
                "foundation_budget_info": self.info}

    def stream_handlers(self) -> dict[str, Any]:
        return {"foundation_budget_record": self.record}

    def client_handlers(self) -> dict[str, Any]:
        return {"foundation_budget_record": self.record}

    def reserve(self, budget: dict[str, Any] | None = None,
                rate: dict[str, Any] | None = None) -> dict[str, Any]:
        """Reserve one call: the ledger's reply (refused, or granted with a wait)."""
        return self.ledger.reserve(budget=budget, rate=rate)

    def record(self, **msg: Any) -> None:
        """What a reserved call used; never raises (a stream handler)."""
        with contextlib.suppress(TypeError, ValueError):  # a malformed message
            self.ledger.record(**msg)

    def info(self, id: str | None = None) -> dict[str, Any]:
        """One budget's spending, or every budget's by id."""
        return self.ledger.info(id)
