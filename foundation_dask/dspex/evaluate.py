"""Client and worker: distributed evaluation, (program x example) evaluations scattered
over the cluster.

``Evaluate(devset=..., metric=...)(program)`` splits the devset into chunks and
submits one Dask task per chunk, so the per-task overhead of the scheduler (100-300
tiny tasks/s on two cores) stays a small part of the work. Each chunk evaluates its
examples one after the other in a worker process (where a local LM is loaded once)
and returns one record per example. Progress (done, running score, rate, ETA) goes
out on the ``telemetry`` channel and to a progress line as chunks finish.

Settings: what ``dspex.configure`` and the enclosing ``dspex.context`` blocks set where
the evaluation is called (the LM, adapter, cache switch...) travels with every chunk and
is in effect while the chunk runs on its worker (:mod:`~foundation_dask.dspex.snapshot`).

Failures: a program or metric that raises, or a metric that returns NaN or an
infinite value, is recorded for that example with its error and scored
``failure_score``; ``max_errors`` stops the run with the first failures listed. A
worker that dies mid-evaluation loses nothing: Dask re-runs its chunks on the other
workers (``distributed.scheduler.allowed-failures``), with the same settings.

:class:`Evaluate` and :func:`evaluate_many` run on the client; ``_evaluate_chunk`` is the
task that runs on the workers.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from foundation_dask import config
from foundation_dask._html import html_repr
from foundation_dask.core._client import current_client, worker_infos
from foundation_dask.core.channels import Channels
from foundation_dask.dspex.callbacks import run_with_callbacks
from foundation_dask.dspex.interop._pickling import ship
from foundation_dask.dspex.lm.local import offer_states, receive_states
from foundation_dask.dspex.settings import context
from foundation_dask.dspex.snapshot import SettingsSnapshot, snapshot_settings
from foundation_dask.errors import BudgetExhaustedError, EvaluationError
from foundation_dask.tracecontext import SpanScope

if TYPE_CHECKING:
    import distributed
    import pandas as pd


@dataclass
class EvaluationRecord:
    """The outcome of one (program, example) evaluation."""

    index: int
    prediction: Any
    score: float
    error: str | None
    worker: str
    pid: int
    start: float
    duration: float


def _evaluate_chunk(program: Any, examples: list[tuple[int, Any]], metric: Callable,
                    failure_score: float, lm: Any = None,
                    carried: SettingsSnapshot | None = None, offer: str | None = None,
                    states: list[Any] | None = None) -> list[EvaluationRecord]:
    """Runs on a worker: evaluate ``examples`` (index, example) with ``program``, under
    the settings ``carried`` from where the evaluation was called. ``states``: local
    model states made on another worker to start from; ``offer``: put the models' states
    aside under that key afterwards (:mod:`foundation_dask.dspex.lm.local`)."""
    if states:
        receive_states(states)
    out = _evaluate_examples(program, examples, metric, failure_score, lm, carried)
    if offer is not None:
        offer_states(offer)
    return out


def _evaluate_examples(program: Any, examples: list[tuple[int, Any]], metric: Callable,
                       failure_score: float, lm: Any,
                       carried: SettingsSnapshot | None) -> list[EvaluationRecord]:
    """The records of ``examples`` (a :class:`StoppedChunk` once the LM budget ran out)."""
    try:
        from distributed import get_worker

        worker = get_worker().address
    except ValueError:
        worker = "local"
    pid = os.getpid()
    out: list[EvaluationRecord] = []
    with _carried_context(carried), _lm_context(lm):
        for index, example in examples:
            start = time.time()
            t0 = time.perf_counter()
            prediction, error = None, None
            attrs: dict[str, Any] = {"index": index}
            with SpanScope("evaluate_example", "span", attrs):
                try:
                    prediction = program(**_inputs(example))
                    score = checked_score(metric(example, prediction), metric, index)
                except BudgetExhaustedError as exc:
                    # not a failure of the example: the run stops (no budget left)
                    return StoppedChunk(out, exc)
                except Exception as exc:
                    score = failure_score
                    error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                attrs.update(score=score, error=error)
            out.append(EvaluationRecord(index, prediction, score, error, worker, pid, start,
                                        time.perf_counter() - t0))
    return out


class StoppedChunk(list[Any]):
    """What a chunk task returns when the LM budget stopped it: the results it finished
    (the list) and the :class:`~foundation_dask.errors.BudgetExhaustedError` (``error``)
    its reader raises once it has taken them. The task itself finishes: an expected stop
    is no failed task in the worker's log."""

    def __init__(self, items: list[Any], error: BaseException) -> None:
        super().__init__(items)
        self.error = error


def checked_score(value: Any, metric: Callable, index: int) -> float:
    """``float(value)``; a NaN or infinite score raises ``ValueError`` naming the metric
    and the example (the example is then counted as failed, like a metric that raises)."""
    score = float(value)
    if not math.isfinite(score):
        name = getattr(metric, "__name__", None) or repr(metric)
        raise ValueError(f"metric {name} returned {value!r} for example {index}: a score "
                         "must be a finite number")
    return score


def _carried_context(carried: SettingsSnapshot | None) -> AbstractContextManager[Any]:
    """The settings carried from the client, or nothing."""
    return contextlib.nullcontext() if carried is None else carried.applied()


def _lm_context(lm: Any) -> AbstractContextManager[Any]:
    """``dspex.context(lm=lm)``, or nothing when ``lm`` is None."""
    if lm is None:
        return contextlib.nullcontext()
    return context(lm=lm)


def _inputs(example: Any) -> dict[str, Any]:
    inputs = example.inputs() if hasattr(example, "inputs") else example
    if hasattr(inputs, "toDict"):
        return inputs.toDict()
    return dict(inputs)


def auto_chunk_size(n_examples: int, n_slots: int, per_slot_chunks: int = 4) -> int:
    """Examples per task: about ``per_slot_chunks`` tasks per evaluation slot (a worker
    thread, :func:`evaluation_slots`), at least 1.

    Fewer, larger tasks amortise the scheduler's per-task cost; several per slot keep
    every thread busy (an HTTP LM's calls wait on the network, so each thread of a
    worker runs one), load balanced and progress reporting fine-grained.
    """
    if n_examples <= 0:
        return 1
    return max(1, math.ceil(n_examples / (max(1, n_slots) * per_slot_chunks)))


def chunk_size_for(client: distributed.Client, n_examples: int, chunk_size: int | str,
                   workers: Sequence[str] | None = None) -> int:
    """``chunk_size``; for ``"auto"`` the dask config ``foundation.dspex.evaluate-chunk-size``
    when it is a number, else :func:`auto_chunk_size` of ``n_examples`` over the
    :func:`evaluation_slots` of ``workers``."""
    if chunk_size == "auto":
        chunk_size = config.get("dspex.evaluate-chunk-size", None) or "auto"
    if chunk_size == "auto":
        return auto_chunk_size(n_examples, evaluation_slots(client, workers))
    return int(chunk_size)


def evaluation_slots(client: distributed.Client, workers: Sequence[str] | None = None) -> int:
    """The threads of the workers that evaluate (``workers``, default all), at least 1:
    how many chunks run at once."""
    return max(1, sum(worker_threads(client, workers).values()))


def worker_threads(client: distributed.Client,
                   workers: Sequence[str] | None = None) -> dict[str, int]:
    """Address -> threads of the workers that evaluate (``workers``, default all; a
    worker named there the scheduler does not know yet counts one thread)."""
    infos = worker_infos(client)
    if not workers:
        return {a: int(w.get("nthreads", 1) or 1) for a, w in infos.items()}
    return {a: int(infos[a].get("nthreads", 1) or 1) if a in infos else 1 for a in workers}


@dataclass
class EvaluationResult:
    """Score and per-example records of an evaluation.

    Attributes
    ----------
    score
        Mean metric over the devset, in percent (like DSPy's ``Evaluate``).
    results
        ``[(example, prediction, score), ...]`` in devset order.
    frame
        DataFrame: example, prediction, score, error, worker, duration.
    """

    score: float
    results: list[tuple[Any, Any, float]]
    records: list[EvaluationRecord] = field(repr=False, default_factory=list)
    devset: Sequence[Any] = field(repr=False, default=())
    wall_time: float = 0.0
    eval_id: str = ""

    @property
    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([
            {"example": self.devset[r.index], "prediction": r.prediction, "score": r.score,
             "error": r.error, "worker": r.worker, "duration": r.duration}
            for r in self.records
        ])

    @property
    def errors(self) -> list[EvaluationRecord]:
        return [r for r in self.records if r.error]

    def __float__(self) -> float:
        return float(self.score)

    def __repr__(self) -> str:
        # DSPy's repr; errors and timing are in the HTML repr and in ``frame``
        return (f"EvaluationResult(score={self.score}, "
                f"results=<list of {len(self.results)} results>)")

    def _repr_html_(self) -> str:
        workers = sorted({r.worker for r in self.records})
        return html_repr(
            repr(self), "Evaluation",
            summary=(f"score {self.score:.2f}% on {len(self.records)} examples, "
                     f"{len(self.errors)} errors, {self.wall_time:.2f} s on {len(workers)} "
                     "workers"))


class _Progress:
    """One progress line on stderr (or nothing), updated as chunks finish."""

    def __init__(self, total: int, enabled: bool, label: str):
        self.total = total
        self.enabled = enabled
        self.label = label
        self.t0 = time.perf_counter()

    def update(self, done: int, score_sum: float) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else None
        score = 100.0 * score_sum / done if done else 0.0
        if self.enabled:
            width = 30
            filled = int(width * done / max(1, self.total))
            eta_text = f"{eta:.0f}s" if eta is not None else "?"
            sys.stderr.write(
                f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                f"score {score:.1f}% {rate:.1f}/s ETA {eta_text}  "
            )
            if done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        return {"done": done, "total": self.total, "running_score": score, "rate": rate,
                "eta_s": eta, "elapsed_s": elapsed}


class Evaluate:
    """Evaluate a program on a devset, distributed over the Dask cluster.

    Parameters
    ----------
    devset
        Examples (``Example.with_inputs(...)``).
    metric
        ``metric(example, prediction, trace=None) -> float | bool``.
    failure_score
        Score of an example whose program or metric raised.
    max_errors
        Stop once this many examples have failed, as DSPy does (``None``: never stop).
    chunk_size
        Examples per task, or ``"auto"`` (:func:`auto_chunk_size`).
    display_progress
        Show a progress line while it runs.
    workers
        Restrict evaluation to these worker addresses (capacity-aware placement).
    lm
        Run the program under ``dspex.context(lm=lm)`` on the workers (by default the
        program runs under the settings in effect where the evaluator is called:
        ``dspex.configure(lm=...)``, ``with dspex.context(lm=...)``).
    num_threads
        Accepted for DSPy compatibility; the cluster decides parallelism.
    client
        The Dask client to run on; by default the current one when called (the default
        client, else the one :func:`foundation_dask.connect` opens).
    progress_channel
        The channel progress goes out on (``None``: none).
    label
        Name of the evaluation in progress lines and messages.
    save_as_json, save_as_csv
        Write the per-example results there (:mod:`~foundation_dask.dspex.results`).
    callbacks
        Callbacks of this evaluator; its ``on_evaluate_start`` / ``on_evaluate_end``
        handlers (and those configured) run on the client around each call.
    """

    def __init__(self, *, devset: Sequence[Any], metric: Callable | None = None,
                 failure_score: float = 0.0, max_errors: int | None = None,
                 chunk_size: int | str = "auto", display_progress: bool = False,
                 workers: Sequence[str] | None = None, lm: Any = None,
                 num_threads: int | None = None, client: distributed.Client | None = None,
                 progress_channel: str | None = "telemetry", label: str = "Evaluate",
                 save_as_json: str | None = None, save_as_csv: str | None = None,
                 callbacks: list[Any] | None = None):
        if chunk_size != "auto" and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or 'auto', not {chunk_size!r}")
        if max_errors is not None and max_errors < 0:
            raise ValueError(f"max_errors must be >= 0 or None, not {max_errors!r}")
        self.devset = list(devset)
        self.metric = metric
        self.failure_score = failure_score
        self.max_errors = max_errors
        self.chunk_size = chunk_size
        self.display_progress = display_progress
        self.workers = list(workers) if workers else None
        self.lm = lm
        self.client = client
        self.progress_channel = progress_channel
        self.label = label
        self.num_threads = num_threads
        self.save_as_json = save_as_json
        self.save_as_csv = save_as_csv
        self.callbacks = list(callbacks or [])

    def __call__(self, program: Any, metric: Callable | None = None,
                 devset: Sequence[Any] | None = None, *,
                 client: distributed.Client | None = None, **kwargs: Any) -> EvaluationResult:
        """Evaluate ``program``, with this evaluator's metric and devset unless given.

        ``client`` overrides the evaluator's client; ``display_progress=`` overrides its
        setting; other keyword arguments (DSPy's ``num_threads``...) are accepted and
        ignored.
        """
        inputs = {"program": program, "metric": metric, "devset": devset, **kwargs}
        return run_with_callbacks(self, "__call__",
                                  lambda: self._evaluate(program, metric, devset, client,
                                                         **kwargs), inputs)

    def _evaluate(self, program: Any, metric: Callable | None, devset: Sequence[Any] | None,
                  client: distributed.Client | None, **kwargs: Any) -> EvaluationResult:
        metric = metric or self.metric
        devset = list(devset) if devset is not None else self.devset
        if metric is None:
            raise TypeError("Evaluate needs a metric: Evaluate(devset=..., metric=fn)")
        if not devset:
            raise ValueError("Evaluate got an empty devset: pass at least one Example")
        carried = snapshot_settings()
        client = client or self.client or current_client()
        result = evaluate_many(
            client, [program], devset, metric, failure_score=self.failure_score,
            max_errors=self.max_errors, chunk_size=self.chunk_size,
            display_progress=kwargs.get("display_progress", self.display_progress),
            workers=self.workers, lm=self.lm, progress_channel=self.progress_channel,
            label=self.label, carried=carried,
        )[0]
        save_as_json = kwargs.get("save_as_json") or self.save_as_json
        save_as_csv = kwargs.get("save_as_csv") or self.save_as_csv
        if save_as_json or save_as_csv:
            from foundation_dask.dspex.results import save_results

            save_results(result.results, metric, save_as_json=save_as_json,
                         save_as_csv=save_as_csv)
        return result


def evaluate_many(client: distributed.Client, programs: Sequence[Any], devset: Sequence[Any],
                  metric: Callable, *, failure_score: float = 0.0,
                  max_errors: int | None = None, chunk_size: int | str = "auto",
                  display_progress: bool = False, workers: Sequence[str] | None = None,
                  lm: Any = None, progress_channel: str | None = "telemetry",
                  label: str = "Evaluate", on_record: Callable | None = None,
                  on_chunk: Callable | None = None, on_records: Callable | None = None,
                  done: dict[tuple[int, int], EvaluationRecord] | None = None,
                  eval_id: str | None = None,
                  carried: SettingsSnapshot | None = None,
                  examples: Sequence[int] | None = None,
                  program_ids: Sequence[int] | None = None) -> list[EvaluationResult]:
    """Evaluate several programs on one devset with every (program, chunk) in flight at once.

    This is what optimizers use to evaluate all their candidates together instead of
    one after another. Returns one :class:`EvaluationResult` per program, over the
    devset indices ``examples`` (default: all). ``program_ids`` name the programs in
    ``done`` (records made already, by (program id, example index)), in the callbacks
    and in task keys (default: their positions). ``carried`` is the settings every
    chunk runs under (default: those in effect here,
    :func:`~foundation_dask.dspex.snapshot.snapshot_settings`).
    """

    eval_id = eval_id or uuid.uuid4().hex[:12]
    carried = carried if carried is not None else snapshot_settings()
    ids = list(program_ids) if program_ids is not None else list(range(len(programs)))
    wanted = list(range(len(devset))) if examples is None else list(examples)
    size = chunk_size_for(client, len(wanted) * len(programs), chunk_size, workers)
    size = max(1, min(size, len(wanted)))
    done = done or {}
    t0 = time.perf_counter()
    submit = ChunkSubmitter(client, metric, failure_score, lm, carried, eval_id, workers)
    futures = {}
    for p, program in enumerate(programs):
        program = ship(program)  # a DSPy program: pickled once, a part that does not is named
        todo = [(i, devset[i]) for i in wanted if (ids[p], i) not in done]
        for chunk in (todo[i:i + size] for i in range(0, len(todo), size)):
            futures[submit(program, ids[p], chunk)] = p
    in_wanted = set(wanted)
    tally = Tally(ids, _Progress(len(wanted) * len(programs), display_progress, label),
                  client=client, eval_id=eval_id, label=label, channel=progress_channel,
                  max_errors=max_errors, on_record=on_record, on_records=on_records,
                  on_chunk=on_chunk)
    tally.resume({key: r for key, r in done.items() if key[1] in in_wanted})
    with contextlib.closing(as_they_complete(client, futures)) as finished:
        for fut in finished:
            p = futures.pop(fut)  # its result is read once: the cluster may forget it
            try:
                tally.read(p, fut)
            except BudgetExhaustedError:
                tally.drain(futures)
                raise
    wall = time.perf_counter() - t0
    return [tally.result(p, devset, wall) for p in range(len(programs))]


class ChunkSubmitter:
    """Submits ``_evaluate_chunk`` tasks of one evaluation: its metric, failure score,
    LM, carried settings, task-key prefix and worker restriction."""

    def __init__(self, client: distributed.Client, metric: Callable, failure_score: float,
                 lm: Any, carried: SettingsSnapshot, eval_id: str,
                 workers: Sequence[str] | None) -> None:
        self.client, self.metric, self.failure_score = client, metric, failure_score
        self.lm, self.carried, self.eval_id = lm, carried, eval_id
        self.workers = list(workers) if workers else None

    def __call__(self, program: Any, pid: int, chunk: list[tuple[int, Any]],
                 worker: str | None = None, offer: str | None = None,
                 states: Any = None) -> Any:
        """The future of one chunk (``(index, example)`` pairs) of program ``pid``;
        ``program`` as :func:`~foundation_dask.dspex.interop._pickling.ship` gives it.
        ``worker``: run it there if that worker can (else on another); ``offer``,
        ``states`` (a future of :func:`~foundation_dask.dspex.lm.local.take_offer`): as
        ``_evaluate_chunk``'s."""
        workers = [worker] if worker is not None else self.workers
        return self.client.submit(
            _evaluate_chunk, program, chunk, self.metric, self.failure_score, self.lm,
            self.carried, offer, states, key=f"evaluate-{self.eval_id}-{pid}-{chunk[0][0]}",
            workers=workers, allow_other_workers=workers is not None, pure=False,
            retries=0,
        )


class Tally:
    """What an evaluation of several programs has read so far, chunk by chunk.

    Keeps each program's records, runs the callbacks (``on_records(pid, records)``,
    ``on_record(pid, record)``, ``on_chunk(state)``), updates ``progress`` and publishes
    it, and raises :class:`~foundation_dask.errors.EvaluationError` once ``max_errors``
    examples have failed, as DSPy's executor does. ``ids`` name the programs (by
    position) in callbacks.
    """

    def __init__(self, ids: Sequence[int], progress: _Progress, *, client: distributed.Client,
                 eval_id: str, label: str, channel: str | None, max_errors: int | None,
                 on_record: Callable | None = None, on_records: Callable | None = None,
                 on_chunk: Callable | None = None) -> None:
        self.ids, self.progress = list(ids), progress
        self.client, self.eval_id, self.label, self.channel = client, eval_id, label, channel
        self.max_errors = max_errors
        self.on_record, self.on_records, self.on_chunk = on_record, on_records, on_chunk
        self.records: list[list[EvaluationRecord]] = [[] for _ in self.ids]
        self.n_done = 0
        self.score_sum = 0.0
        self.errors: list[EvaluationRecord] = []

    def resume(self, done: dict[tuple[int, int], EvaluationRecord]) -> None:
        """Count records made already (by (program id, example index)); no callbacks."""
        position = {pid: p for p, pid in enumerate(self.ids)}
        for (pid, _), record in done.items():
            if pid in position:
                self._count(position[pid], record)

    def _count(self, p: int, record: EvaluationRecord) -> None:
        self.records[p].append(record)
        self.n_done += 1
        self.score_sum += record.score
        if record.error:
            self.errors.append(record)

    def read(self, p: int, future: Any, result: list[EvaluationRecord] | None = None
             ) -> list[EvaluationRecord]:
        """The records of program ``p``'s finished chunk ``future`` (``result``: its
        result, gathered already), taken (:meth:`add`). A chunk the LM budget stopped
        (:class:`StoppedChunk`) raises its ``BudgetExhaustedError`` once the examples it
        finished are taken."""
        records: list[EvaluationRecord] = future.result() if result is None else result
        self.add(p, list(records))
        if isinstance(records, StoppedChunk):
            raise records.error
        return records

    def drain(self, futures: dict[Any, int]) -> None:
        """Take what the chunks still in flight (future -> program position) finish:
        once the LM budget is spent they stop at their next call, and the examples they
        finished were paid for. Their errors (the same exhaustion) are not raised."""
        from distributed import wait

        wait(list(futures))
        for fut, p in list(futures.items()):
            del futures[fut]
            if fut.status == "finished":
                with contextlib.suppress(BudgetExhaustedError):
                    self.read(p, fut)

    def add(self, p: int, chunk_records: list[EvaluationRecord]) -> dict[str, Any]:
        """Take the records of one finished chunk of program ``p``; returns the progress."""
        if self.on_records is not None:
            self.on_records(self.ids[p], chunk_records)
        for r in chunk_records:
            self._count(p, r)
            if self.on_record is not None:
                self.on_record(self.ids[p], r)
        state = self.report()
        if self.max_errors is not None and self.errors and len(self.errors) >= self.max_errors:
            first = "\n".join(f"  example {r.index}: {r.error}" for r in self.errors[:5])
            raise EvaluationError(
                f"{self.label}: {len(self.errors)} examples failed (max_errors="
                f"{self.max_errors}); first failures:\n{first}",
                label=self.label, failed=len(self.errors), max_errors=self.max_errors,
            )
        return state

    def report(self) -> dict[str, Any]:
        """Publish the progress as it stands (also after the plan shrank: a race stopped
        candidates) and tell ``on_chunk``; returns the progress state."""
        state = report_progress(self.progress, self.n_done, self.score_sum,
                                channel=self.channel, client=self.client,
                                eval_id=self.eval_id, label=self.label)
        if self.on_chunk is not None:
            self.on_chunk({"phase": self.label, "eval_id": self.eval_id, **state})
        return state

    def result(self, p: int, devset: Sequence[Any], wall: float) -> EvaluationResult:
        """Program ``p``'s :class:`EvaluationResult` over the examples read."""
        recs = sorted(self.records[p], key=lambda r: r.index)
        score = 100.0 * sum(r.score for r in recs) / max(1, len(recs))
        return EvaluationResult(
            score=round(score, 2), results=[(devset[r.index], r.prediction, r.score)
                                            for r in recs],
            records=recs, devset=devset, wall_time=wall, eval_id=self.eval_id)


def _publish(channel: str, msg: dict[str, Any], client: distributed.Client) -> None:
    with contextlib.suppress(Exception):  # progress reporting never fails an evaluation
        Channels.broadcast(channel, msg, client=client)


def as_they_complete(client: distributed.Client, futures: Any) -> Generator[Any, None, None]:
    """The futures of chunk tasks as they finish; close it (``contextlib.closing``) and
    those not finished when the caller stops (an error, enough failures) are
    cancelled."""
    from distributed import as_completed

    try:
        yield from as_completed(futures, loop=client.loop)
    finally:
        remaining = [f for f in futures if not f.done()]
        if remaining:
            client.cancel(remaining)


def report_progress(progress: _Progress, n_done: int, score_sum: float, *,
                    channel: str | None, client: distributed.Client, eval_id: str,
                    label: str) -> dict[str, Any]:
    """Update the progress line and publish an ``evaluation_progress`` message on
    ``channel`` (what the panels follow); returns the progress state."""
    state = progress.update(n_done, score_sum)
    if channel:
        _publish(channel, {"type": "evaluation_progress", "eval_id": eval_id,
                           "label": label, **state}, client)
    return state
