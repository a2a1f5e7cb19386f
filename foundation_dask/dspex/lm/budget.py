"""Any process: budgets and rate limits of LM calls, exact across the cluster.

``dspex.configure(budget=dspex.Budget(max_calls=1000, max_tokens=200_000, max_cost=2.50,
price_per_1k_prompt=0.0005, price_per_1k_completion=0.0015), rate_limit="60/min")``
caps what every LM call made under those settings may spend, wherever it runs: the
settings travel with the tasks of ``Evaluate``, an optimizer's ``compile`` and the
distributed optimization (:mod:`~foundation_dask.dspex.snapshot`), so the same
:class:`Budget` (the same :attr:`Budget.id`) reaches every worker.

How a call spends
    :meth:`BaseLM.generate <foundation_dask.dspex.lm.base.BaseLM.generate>` answers
    from the LM cache first: a cache hit costs nothing and is not counted. A miss
    reserves the call before the model runs (:func:`reserve`) and records what it
    used after (:meth:`Ticket.record`). The reservation asks the ledger, which lives
    on the scheduler (:class:`~foundation_dask.dspex.lm._budget_scheduler_plugin.BudgetExtension`)
    when this process is connected to a Foundation cluster (a worker, or a client),
    else in this process: one round trip to the scheduler per call that reaches the
    model (a process whose only connection is an asynchronous client, or code on an
    event loop, uses its own ledger). A call is refused, with
    :class:`~foundation_dask.errors.BudgetExhaustedError`,
    when its reservation would take the calls past ``max_calls``, or when the tokens
    (cost) recorded have reached ``max_tokens`` (``max_cost``). Calls are counted
    exactly; tokens and cost are known only after a call, so the calls in flight when
    the cap is reached may take them past it. A call whose model raised counts as a
    call (it may have reached the server), with no tokens; its retries (HTTP 429,
    5xx) are one call.

Rate limit
    ``rate_limit="60/min"`` (also ``"10/s"``, ``"1000/h"``, ``"100/10s"``, or a
    :class:`RateLimit`) lets at most that many calls start in any window of the period,
    across the cluster: the scheduler gives each call the time it may start at
    (a sliding window over the calls granted), the caller sleeps until then. Limits
    with the same numbers share one window (:attr:`RateLimit.key`): the limit is the
    provider's. The window holds the start times the scheduler grants; a grant that
    reaches its caller late (network, a busy worker) may bring two calls to the
    provider a little closer than that.

When the budget runs out
    ``Evaluate`` stops with the :class:`~foundation_dask.errors.BudgetExhaustedError`
    (a refused call is not a failed example); ``BootstrapFewShotWithRandomSearch.compile``
    and ``DistributedOptimizer`` return the best program so far, with
    ``stopped_reason``: every example evaluated counts, also those of a chunk the
    budget stopped (its task returns them, with the error, as a
    :class:`~foundation_dask.dspex.evaluate.StoppedChunk`). A teacher run refused while
    bootstrapping stops the search the same way.

Readout and prediction
    :meth:`Budget.spent` / :func:`budget_info` read the ledger; :func:`estimate`
    predicts what a run will spend (calls from the work planned, tokens and cost from
    the mean tokens per call the ledger has seen) and, after the run,
    :meth:`CostEstimate.actual` tells what it spent.

DSPy programs running on DSPEx machinery call DSPy's own LM: budgets and rate limits do
not apply to those calls.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from foundation_dask.core._client import call_here, scheduler_call, send_here
from foundation_dask.dspex.settings import register_validator, settings
from foundation_dask.errors import BudgetExhaustedError, LMError

__all__ = ["Budget", "CostEstimate", "Ledger", "RateLimit", "Ticket", "budget_info",
           "estimate", "parse_rate_limit", "reserve"]

logger = logging.getLogger(__name__)


def _check_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Budget({name}=...) takes a whole number or None, not "
                        f"{type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"Budget({name}={value}) must be >= 0 (None: no cap)")
    return value


def _check_amount(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Budget({name}=...) takes a number or None, not "
                        f"{type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Budget({name}={value}) must be a finite number >= 0")
    return float(value)


@dataclass(frozen=True)
class Budget:
    """What the LM calls made under ``dspex.configure(budget=...)`` may spend, in all.

    Parameters
    ----------
    max_calls
        Calls that reach the model (cache hits are free), at most; ``None``: no cap.
    max_tokens
        Prompt plus completion tokens: no call starts once the calls recorded have
        used this many.
    max_cost
        Cost, in the currency of the prices: no call starts once it is reached. Needs
        both prices.
    price_per_1k_prompt, price_per_1k_completion
        Price of 1,000 prompt tokens and of 1,000 completion tokens (as providers list
        them); without ``max_cost`` they only meter the cost (:meth:`spent`).
    id
        The ledger's key, made at creation; copies and pickles keep it, so one
        ``Budget`` is one ledger across the cluster. A new ``Budget`` starts afresh;
        one given the ``id`` of another goes on from what that one spent, with its own
        caps (``Budget(max_calls=2000, id=old.id)`` raises the cap of ``old``).

    Raises
    ------
    TypeError, ValueError
        A cap or price that is not a number >= 0; ``max_cost`` without prices.

    Examples
    --------
    >>> from foundation_dask import dspex
    >>> budget = dspex.Budget(max_calls=1000, max_tokens=200_000, max_cost=2.50,
    ...                       price_per_1k_prompt=0.0005, price_per_1k_completion=0.0015)
    >>> dspex.configure(budget=budget, rate_limit="60/min")     # doctest: +SKIP
    >>> budget.spent()["calls"]                                   # doctest: +SKIP
    412
    """

    max_calls: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    _: KW_ONLY
    price_per_1k_prompt: float | None = None
    price_per_1k_completion: float | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: the checked values replace the given ones
        set_(self, "max_calls", _check_count("max_calls", self.max_calls))
        set_(self, "max_tokens", _check_count("max_tokens", self.max_tokens))
        set_(self, "max_cost", _check_amount("max_cost", self.max_cost))
        for name in ("price_per_1k_prompt", "price_per_1k_completion"):
            set_(self, name, _check_amount(name, getattr(self, name)))
        if self.max_cost is not None and (self.price_per_1k_prompt is None
                                          or self.price_per_1k_completion is None):
            raise ValueError(
                "Budget(max_cost=...) needs the prices to count the cost: pass "
                "price_per_1k_prompt= and price_per_1k_completion= (the provider's price "
                "of 1,000 prompt and 1,000 completion tokens)")
        if not isinstance(self.id, str) or not self.id:
            raise TypeError(f"Budget(id=...) must be a non-empty string, not {self.id!r}")

    @property
    def priced(self) -> bool:
        """Whether the cost of a call can be counted (both prices are known)."""
        return self.price_per_1k_prompt is not None and self.price_per_1k_completion is not None

    def cost_of(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The cost of a call that used these tokens (0 when the budget has no prices)."""
        return (prompt_tokens * (self.price_per_1k_prompt or 0.0)
                + completion_tokens * (self.price_per_1k_completion or 0.0)) / 1000.0

    def limits(self) -> dict[str, Any]:
        """What the ledger needs to know: ``id`` and the caps."""
        return {"id": self.id, "max_calls": self.max_calls, "max_tokens": self.max_tokens,
                "max_cost": self.max_cost}

    def spent(self, client: Any = None) -> dict[str, Any]:
        """What the calls under this budget spent so far (:func:`budget_info`)."""
        return budget_info(self, client=client)

    def remaining(self, client: Any = None) -> dict[str, Any]:
        """What is left of each cap: ``calls``, ``tokens``, ``cost`` (``None``: no cap)."""
        info = self.spent(client=client)
        return {
            "calls": None if self.max_calls is None else max(0, self.max_calls - info["calls"]),
            "tokens": None if self.max_tokens is None
            else max(0, self.max_tokens - info["tokens"]),
            "cost": None if self.max_cost is None else max(0.0, self.max_cost - info["cost"]),
        }

    def __repr__(self) -> str:
        caps = [f"{k}={v!r}" for k, v in (("max_calls", self.max_calls),
                                            ("max_tokens", self.max_tokens),
                                            ("max_cost", self.max_cost)) if v is not None]
        return f"Budget({', '.join(caps) or 'no cap'}, id={self.id!r})"


# ---------------------------------------------------------------------------------------
# rate limits

_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
          "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
          "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class RateLimit:
    """At most ``calls`` LM calls start in any window of ``period`` seconds, cluster-wide.

    ``key`` names the window on the scheduler (default: from the numbers, so that the
    limits of one provider, configured in several places, share it).
    """

    calls: int
    period: float
    key: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.calls, bool) or not isinstance(self.calls, int) or self.calls < 1:
            raise ValueError(f"RateLimit(calls={self.calls!r}) must be a whole number >= 1")
        if (isinstance(self.period, bool) or not isinstance(self.period, int | float)
                or not math.isfinite(self.period) or self.period <= 0):
            raise ValueError(f"RateLimit(period={self.period!r}) must be a number of "
                             "seconds > 0")
        object.__setattr__(self, "period", float(self.period))
        if not self.key:
            object.__setattr__(self, "key", f"{self.calls}/{self.period:g}s")

    def limits(self) -> dict[str, Any]:
        """What the scheduler's window needs: ``key``, ``calls``, ``period``."""
        return {"key": self.key, "calls": self.calls, "period": self.period}

    def __str__(self) -> str:
        return f"{self.calls}/{self.period:g}s"


def parse_rate_limit(spec: str | RateLimit) -> RateLimit:
    """The :class:`RateLimit` of ``"60/min"``, ``"10/s"``, ``"1000/h"``, ``"100/10s"``.

    Units: ``s``/``sec``/``second(s)``, ``m``/``min``/``minute(s)``, ``h``/``hr``/``hour(s)``.

    Raises
    ------
    TypeError
        ``spec`` is neither a string nor a :class:`RateLimit`.
    ValueError
        The string does not read as calls per period, or a number is 0.
    """
    if isinstance(spec, RateLimit):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"rate_limit takes a string such as '60/min' or a RateLimit, not "
                        f"{type(spec).__name__} {spec!r}")
    match = _RATE.match(spec.lower())
    unit = _UNITS.get(match[3]) if match else None
    if match is None or unit is None:
        raise ValueError(f"rate_limit {spec!r} does not read as calls per period: write it "
                         "as '60/min', '10/s', '1000/h' or '100/10s' (units: s, min, h)")
    calls, count = int(match[1]), float(match[2]) if match[2] else 1.0
    if calls < 1 or count <= 0:
        raise ValueError(f"rate_limit {spec!r} allows no call: the calls and the period "
                         "must be > 0")
    return RateLimit(calls, count * unit)


def _checked_budget(value: Any) -> Budget | None:
    if value is None or isinstance(value, Budget):
        return value
    raise TypeError(f"dspex.configure(budget=...) takes a dspex.Budget(max_calls=..., "
                    f"max_tokens=..., max_cost=...) or None, not {type(value).__name__} "
                    f"{value!r}")


def _checked_rate(value: Any) -> RateLimit | None:
    return None if value is None else parse_rate_limit(value)


register_validator("budget", _checked_budget)
register_validator("rate_limit", _checked_rate)


# ---------------------------------------------------------------------------------------
# the ledger: the scheduler's (one per cluster) or this process's


class Ledger:
    """The spending of budgets and the windows of rate limits (any process).

    The scheduler's :class:`~foundation_dask.dspex.lm._budget_scheduler_plugin.BudgetExtension`
    holds one, used on its event loop; a process without a cluster holds its own
    (:data:`LOCAL`), used under its lock. Entries are made on first sight of a budget
    id or rate key, with the caps the reservation carries.
    """

    def __init__(self) -> None:
        self.budgets: dict[str, dict[str, Any]] = {}
        self.windows: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def reserve(self, budget: dict[str, Any] | None = None,
                rate: dict[str, Any] | None = None) -> dict[str, Any]:
        """Reserve one call: ``{"ok": True, "wait": seconds}`` (start the call that much
        later), or ``{"ok": False, "limit", "cap", "spent", "id"}`` when the budget
        cannot cover it (nothing is reserved then)."""
        if budget is not None:
            entry = self.budgets.get(budget["id"])
            if entry is None:
                entry = self.budgets[budget["id"]] = {
                    "calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0,
                    "refused": 0, "failed": 0, "in_flight": 0, "created": time.time()}
            entry.update(budget)  # the caps of the latest Budget with this id
            refusal = _refusal(entry)
            if refusal is not None:
                entry["refused"] += 1
                return {"ok": False, "id": budget["id"], **refusal}
            entry["calls"] += 1
            entry["in_flight"] += 1
        wait = 0.0
        if rate is not None:
            wait = self._slot(rate["key"], int(rate["calls"]), float(rate["period"]))
        return {"ok": True, "wait": wait}

    def _slot(self, key: str, calls: int, period: float) -> float:
        """The wait before the next call of window ``key`` may start: the start times
        granted are kept (the last ``calls``), each ``period`` after the one ``calls``
        before it, so no window of ``period`` holds more than ``calls`` starts."""
        window = self.windows.get(key)
        if window is None or window.maxlen != calls:
            window = self.windows[key] = deque(window or (), maxlen=calls)
        now = time.monotonic()
        start = now
        if len(window) == calls:
            start = max(now, window[0] + period)
        if window:
            start = max(start, window[-1])
        window.append(start)
        return start - now

    def record(self, id: str = "", prompt_tokens: int = 0, completion_tokens: int = 0,
               cost: float = 0.0, failed: bool = False, **_: Any) -> None:
        """What a reserved call used (``failed``: its model raised)."""
        entry = self.budgets.get(id)
        if entry is None:
            return
        entry["in_flight"] = max(0, entry["in_flight"] - 1)
        entry["prompt_tokens"] += int(prompt_tokens)
        entry["completion_tokens"] += int(completion_tokens)
        entry["cost"] += float(cost)
        entry["failed"] += 1 if failed else 0

    def info(self, id: str | None = None) -> dict[str, Any]:
        """One budget's spending (:func:`budget_info`), or every budget's by id."""
        if id is not None:
            entry = self.budgets.get(id)
            return _readout(entry) if entry is not None else _readout({"id": id})
        return {k: _readout(v) for k, v in self.budgets.items()}


def _refusal(entry: dict[str, Any]) -> dict[str, Any] | None:
    tokens = entry["prompt_tokens"] + entry["completion_tokens"]
    if entry.get("max_calls") is not None and entry["calls"] + 1 > entry["max_calls"]:
        return {"limit": "calls", "cap": entry["max_calls"], "spent": entry["calls"]}
    if entry.get("max_tokens") is not None and tokens >= entry["max_tokens"]:
        return {"limit": "tokens", "cap": entry["max_tokens"], "spent": tokens}
    if entry.get("max_cost") is not None and entry["cost"] >= entry["max_cost"]:
        return {"limit": "cost", "cap": entry["max_cost"], "spent": entry["cost"]}
    return None


def _readout(entry: dict[str, Any]) -> dict[str, Any]:
    prompt, completion = entry.get("prompt_tokens", 0), entry.get("completion_tokens", 0)
    return {"id": entry.get("id"), "calls": entry.get("calls", 0), "prompt_tokens": prompt,
            "completion_tokens": completion, "tokens": prompt + completion,
            "cost": entry.get("cost", 0.0), "refused": entry.get("refused", 0),
            "failed": entry.get("failed", 0), "in_flight": entry.get("in_flight", 0),
            "max_calls": entry.get("max_calls"), "max_tokens": entry.get("max_tokens"),
            "max_cost": entry.get("max_cost")}


#: The ledger of this process, for the calls made without a Foundation cluster.
LOCAL = Ledger()


# ---------------------------------------------------------------------------------------
# reserving and recording calls (BaseLM.generate)


class Ticket:
    """A reserved call: :meth:`record` what it used once it is done."""

    def __init__(self, budget: Budget | None, cluster: bool) -> None:
        self.budget = budget
        self.cluster = cluster

    def record(self, usage: dict[str, Any] | None) -> None:
        """Record the call's ``usage`` (``prompt_tokens``, ``completion_tokens``), or a
        call whose model raised (``None``)."""
        if self.budget is None:
            return
        prompt = int((usage or {}).get("prompt_tokens") or 0)
        completion = int((usage or {}).get("completion_tokens") or 0)
        msg: dict[str, Any] = {
            "id": self.budget.id, "prompt_tokens": prompt, "completion_tokens": completion,
            "cost": self.budget.cost_of(prompt, completion), "failed": usage is None}
        if self.cluster and send_here({"op": "foundation_budget_record", **msg}):
            return
        with LOCAL.lock:
            LOCAL.record(**msg)


#: The ticket of a call made without budget nor rate limit.
NO_TICKET = Ticket(None, cluster=False)


def reserve() -> Ticket:
    """Reserve an LM call under the budget and rate limit in effect (none: nothing is
    asked), waiting for its rate-limit slot.

    Raises
    ------
    BudgetExhaustedError
        The budget cannot cover the call.
    LMError
        This process is connected to a cluster whose scheduler has no budget ledger
        (the extension is missing from ``foundation.extensions.scheduler``), or the
        scheduler did not answer.
    """
    budget: Budget | None = settings.get("budget")
    rate: RateLimit | None = settings.get("rate_limit")
    if budget is None and rate is None:
        return NO_TICKET
    if isinstance(rate, str):  # set around the checks (a pickled settings dict)
        rate = parse_rate_limit(rate)
    kwargs = {"budget": budget.limits() if budget is not None else None,
              "rate": rate.limits() if rate is not None else None}
    try:
        cluster, reply = call_here("foundation_budget_reserve", timeout=30.0, **kwargs)
    except Exception as exc:
        raise LMError(
            f"the LM call could not be reserved in the cluster's budget ledger ({exc}): "
            "the scheduler needs foundation_dask.dspex.lm._budget_scheduler_plugin:"
            "BudgetExtension in the dask config foundation.extensions.scheduler") from exc
    if not cluster:
        with LOCAL.lock:
            reply = LOCAL.reserve(**kwargs)
    if not reply["ok"]:
        raise _exhausted(budget, reply)
    if reply["wait"] > 0:
        time.sleep(reply["wait"])
    return Ticket(budget, cluster)


def _exhausted(budget: Budget | None, reply: dict[str, Any]) -> BudgetExhaustedError:
    limit, cap, spent = reply["limit"], reply["cap"], reply["spent"]
    shown = {"calls": f"{spent} of {cap} calls made",
             "tokens": f"{spent:,} of {cap:,} tokens used",
             "cost": f"{spent:.4f} of {cap:.4f} spent"}[limit]
    return BudgetExhaustedError(
        f"LM budget {reply['id']} exhausted: {shown} (max_{limit}={cap}). Configure a "
        "larger dspex.Budget to go on; the calls answered from the cache are free.",
        limit=limit, cap=cap, spent=spent, budget_id=reply["id"])


def budget_info(budget: Budget | str | None = None, client: Any = None) -> dict[str, Any]:
    """What was spent under ``budget`` (a :class:`Budget` or its id), from the ledger of
    the cluster this process is connected to (or of ``client``'s), else this process's.

    Returns
    -------
    dict
        ``calls`` (reserved: made or in flight; refused ones are not counted),
        ``prompt_tokens``, ``completion_tokens``, ``tokens``, ``cost``, ``refused``
        (calls refused), ``failed`` (calls whose model raised), ``in_flight`` (reserved,
        not yet recorded: a worker that died mid-call leaves its call there) and the
        caps; for ``budget=None``, one such dict per budget id the ledger knows.
    """
    id = budget.id if isinstance(budget, Budget) else budget
    if client is not None:
        info: dict[str, Any] = scheduler_call("foundation_budget_info", client=client, id=id)
        return info
    cluster, reply = call_here("foundation_budget_info", timeout=10.0, id=id)
    if cluster:
        return dict(reply)
    with LOCAL.lock:
        return LOCAL.info(id)


# ---------------------------------------------------------------------------------------
# prediction


@dataclass
class CostEstimate:
    """What a run is predicted to spend, and (:meth:`actual`) what it spent.

    ``calls`` is an upper bound (every candidate on every validation example, every
    teacher run, each ``calls_per_run`` calls, no cache hit); ``tokens`` and ``cost``
    are ``calls`` times the mean per call the budget's ledger has seen, ``None``
    (unknown) before it has seen a call.
    """

    calls: int
    tokens: float | None = None
    cost: float | None = None
    label: str = "run"
    budget: Budget | None = field(default=None, repr=False)
    before: dict[str, Any] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        tokens = "unknown" if self.tokens is None else f"~{self.tokens:,.0f}"
        text = f"at most {self.calls:,} LM calls, tokens {tokens}"
        if self.budget is not None and self.budget.priced:
            text += ", cost " + ("unknown" if self.cost is None else f"~{self.cost:.4f}")
        return text

    def actual(self) -> dict[str, Any] | None:
        """What the run spent since the estimate (calls, tokens, cost, refused), from
        the budget's ledger; ``None`` without a budget. Logged too."""
        if self.budget is None or self.before is None:
            logger.info("%s: actual LM cost unknown (no dspex budget configured)", self.label)
            return None
        now = budget_info(self.budget)
        out = {k: now[k] - self.before.get(k, 0)
               for k in ("calls", "prompt_tokens", "completion_tokens", "tokens", "cost",
                         "refused")}
        logger.info("%s: actual LM cost %d calls, %d tokens, cost %.4f (%d refused); "
                    "predicted %s", self.label, out["calls"], out["tokens"], out["cost"],
                    out["refused"], self)
        return out


def estimate(*, candidates: int = 1, valset: int = 0, teacher_runs: int = 0,
             calls_per_run: int = 1, budget: Budget | None = None,
             label: str = "run") -> CostEstimate:
    """Predict what a run spends, and log it (with a warning when the budget cannot
    cover it).

    Parameters
    ----------
    candidates, valset
        Programs evaluated, and the examples each is evaluated on.
    teacher_runs
        Teacher runs at most (the trainset's size for a bootstrap).
    calls_per_run
        LM calls one program run makes (its predictors).
    budget
        The budget the run spends from (default: the one configured); its ledger gives
        the mean tokens per call.
    label
        Name of the run in the log.
    """
    budget = budget if budget is not None else settings.get("budget")
    calls = max(1, calls_per_run) * (max(0, candidates) * max(0, valset) + max(0, teacher_runs))
    est = CostEstimate(calls=calls, label=label, budget=budget)
    if budget is not None:
        try:
            est.before = budget_info(budget)
        except Exception as exc:  # the prediction never stops a run
            logger.warning("%s: could not read the LM budget: %s", label, exc)
        seen = est.before or {}
        made = seen.get("calls", 0) - seen.get("in_flight", 0) - seen.get("failed", 0)
        if made > 0:
            est.tokens = calls * seen["tokens"] / made
            if budget.priced:
                est.cost = calls * seen["cost"] / made
        if budget.max_calls is not None and seen.get("calls", 0) + calls > budget.max_calls:
            logger.warning("%s: %s, but the budget has %d calls left: the run may stop "
                           "early (with the best program so far)", label, est,
                           max(0, budget.max_calls - seen.get("calls", 0)))
    logger.info("%s: predicted LM cost %s", label, est)
    return est
