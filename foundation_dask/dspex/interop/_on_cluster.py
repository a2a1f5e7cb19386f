"""Client: DSPy's own evaluations and ``dspy.Parallel`` batches run on the Dask cluster.

DSPy runs every batch of work through one seam, ``ParallelExecutor.execute(function,
data)``: ``dspy.Evaluate`` (so ``BootstrapFewShotWithRandomSearch``, ``MIPROv2``'s
minibatch and full evaluations, GEPA...), ``dspy.Parallel`` and ``Module.batch``. Inside
``with dspex.on_cluster():`` that seam sends the batch to the cluster instead of a thread
pool:

* ``function`` (DSPy's closure over the program and the metric) is pickled once
  (:mod:`._pickling`: a part that does not pickle is named; an LM that does not pickle
  is rebuilt on the workers from its ``dump_state()``);
* the items go out in chunks, one Dask task per chunk (about four per worker), with the
  DSPy settings in effect here (:mod:`._settings`); each worker unpickles the function
  once and runs the chunk's items one after the other (:mod:`._worker`);
* results come back into DSPy's executor as its threads would have returned them:
  same order, an item that raised gives its exception (logged, counted against
  ``max_errors``, which cancels the rest as DSPy does);
* progress goes out as ``evaluation_progress`` messages on the ``telemetry`` channel
  (what ``dspex.Evaluate`` publishes, so the panels show it) and, unless DSPy disabled
  its progress bar, as a progress line;
* a worker that dies mid-batch loses nothing: Dask runs its chunks again elsewhere.

The switch is a context variable, so only the code inside the block (in its thread) is
affected: other threads and the tasks themselves (where DSPy may nest its own
executors) keep DSPy's threads. The wrapper is installed on ``ParallelExecutor`` once,
the first time ``on_cluster`` is entered, and is inert outside the blocks.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from foundation_dask.core._client import current_client
from foundation_dask.dspex.evaluate import (
    _Progress,
    as_they_complete,
    chunk_size_for,
    report_progress,
)
from foundation_dask.dspex.interop._dspy import require_dspy
from foundation_dask.dspex.interop._pickling import dumps
from foundation_dask.dspex.interop._settings import snapshot_dspy_settings
from foundation_dask.dspex.interop._spans import LMSpanCallback, without_span_callbacks
from foundation_dask.dspex.interop._worker import run_items
from foundation_dask.errors import EvaluationError

if TYPE_CHECKING:
    import distributed

__all__ = ["ClusterExecution", "on_cluster"]

logger = logging.getLogger(__name__)


@dataclass
class ClusterExecution:
    """What an ``on_cluster`` block runs on, and what it ran.

    Attributes
    ----------
    client
        The Dask client (the current one when None).
    workers
        Restrict the tasks to these worker addresses.
    chunk_size
        Items per task, or ``"auto"`` (about four tasks per worker).
    progress_channel
        Channel of the progress messages (None: none).
    batches, items, tasks
        Batches DSPy handed its executor inside the block, their items, the tasks sent.
    """

    client: distributed.Client | None = None
    workers: list[str] | None = None
    chunk_size: int | str = "auto"
    progress_channel: str | None = "telemetry"
    batches: int = 0
    items: int = 0
    tasks: int = 0
    labels: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"ClusterExecution(batches={self.batches}, items={self.items}, "
                f"tasks={self.tasks})")


_ACTIVE: contextvars.ContextVar[ClusterExecution | None] = contextvars.ContextVar(
    "foundation_dask_dspy_on_cluster", default=None)
_INSTALL_LOCK = threading.Lock()
_UNSET = object()


def _label(function: Callable) -> str:
    qualname = getattr(function, "__qualname__", "") or ""
    if qualname.startswith("Evaluate."):
        return "dspy Evaluate"
    if qualname.startswith("Parallel."):
        return "dspy Parallel"
    return f"dspy {qualname.split('.<locals>')[0] or 'batch'}"


def _install() -> None:
    """Wrap ``ParallelExecutor.execute`` (once per process)."""
    require_dspy("dspex.on_cluster")
    from dspy.utils.parallelizer import ParallelExecutor

    with _INSTALL_LOCK:
        if getattr(ParallelExecutor.execute, "_foundation_dask", False):
            return
        original = ParallelExecutor.execute

        def execute(self: Any, function: Callable, data: Sequence[Any]) -> list[Any]:
            run = _ACTIVE.get()
            if run is None or not len(data):
                return original(self, function, data)
            return _execute_on_cluster(self, function, list(data), run)

        execute._foundation_dask = True  # type: ignore[attr-defined]
        execute.__wrapped__ = original  # type: ignore[attr-defined]
        execute.__doc__ = original.__doc__
        ParallelExecutor.execute = execute


def _execute_on_cluster(executor: Any, function: Callable, data: list[Any],
                        run: ClusterExecution) -> list[Any]:
    """DSPy's ``ParallelExecutor.execute`` with the items run on the Dask cluster."""
    label = _label(function)
    payload = dumps(function, f"the work of {label}", getattr(function, "__name__", "work"))
    carried = snapshot_dspy_settings()
    client = run.client or current_client()
    size = chunk_size_for(client, len(data), run.chunk_size, run.workers)
    batch = uuid.uuid4().hex[:12]
    indexed = list(enumerate(data))
    futures = [
        client.submit(run_items, payload, indexed[i:i + size], carried,
                      key=f"dspy-batch-{batch}-{i // size}", workers=run.workers,
                      allow_other_workers=run.workers is not None, pure=False)
        for i in range(0, len(indexed), size)
    ]
    run.batches += 1
    run.items += len(data)
    run.tasks += len(futures)
    run.labels.append(label)
    results: list[Any] = [_UNSET] * len(data)
    progress = _Progress(len(data), not executor.disable_progress_bar, label)
    done, score_sum = 0, 0.0
    with contextlib.closing(as_they_complete(client, futures)) as finished:
        for fut in finished:
            for index, outcome in fut.result():
                done += 1
                if isinstance(outcome, Exception):
                    _record_error(executor, results, index, data[index], outcome)
                    continue
                results[index] = outcome
                if executor.compare_results and isinstance(outcome, tuple) and outcome:
                    with contextlib.suppress(TypeError, ValueError):
                        score_sum += float(outcome[-1])
            report_progress(progress, done, score_sum, channel=run.progress_channel,
                            client=client, eval_id=batch, label=label)
            if executor.cancel_jobs.is_set():
                break
    if executor.cancel_jobs.is_set():
        raise EvaluationError(
            f"{label}: execution cancelled after {executor.error_count} failed items "
            f"(max_errors={executor.max_errors}); first: "
            + "; ".join(f"item {i}: {executor.exceptions_map[i]}"
                        for i in sorted(executor.exceptions_map)[:3]),
            label=label, failed=executor.error_count, max_errors=executor.max_errors)
    return [None if r is _UNSET else r for r in results]


def _record_error(executor: Any, results: list[Any], index: int, item: Any,
                  exc: Exception) -> None:
    """What DSPy's executor does with an item that raised."""
    with executor.error_lock:
        executor.error_count += 1
        if executor.error_count >= executor.max_errors:
            executor.cancel_jobs.set()
    logger.error("Error for %s: %s", item, exc)
    executor._process_outcome(results, index, exc)


@contextlib.contextmanager
def on_cluster(client: distributed.Client | None = None, *,
               workers: Sequence[str] | None = None, chunk_size: int | str = "auto",
               progress_channel: str | None = "telemetry") -> Iterator[ClusterExecution]:
    """Run DSPy's evaluations and parallel batches inside the block on the Dask cluster.

    >>> with dspex.on_cluster():                                  # doctest: +SKIP
    ...     best = dspy.MIPROv2(metric=metric, auto="light").compile(program, trainset=train)

    Parameters
    ----------
    client
        The Dask client (by default the current one: the default client, else the one
        :func:`foundation_dask.connect` opens).
    workers
        Restrict the tasks to these workers.
    chunk_size
        Items per task, or ``"auto"``.
    progress_channel
        Where ``evaluation_progress`` messages go (None: nowhere).

    Yields
    ------
    ClusterExecution
        Counts of the batches, items and tasks the block sent to the cluster.

    Raises
    ------
    DSPyNotInstalledError
        DSPy is not installed (the message has the pip command).
    """
    if chunk_size != "auto" and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or 'auto', not {chunk_size!r}")
    _install()
    import dspy

    run = ClusterExecution(client=client, workers=list(workers) if workers else None,
                           chunk_size=chunk_size, progress_channel=progress_channel)
    token = _ACTIVE.set(run)
    try:
        # LM calls made here (bootstrapping, proposing instructions) are spans too
        callbacks = without_span_callbacks(dspy.settings.callbacks)
        with dspy.context(callbacks=[*callbacks, LMSpanCallback()]):
            yield run
    finally:
        _ACTIVE.reset(token)
