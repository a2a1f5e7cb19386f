"""Client and worker: the teacher runs that bootstrap demos, shared by the optimizers.

:func:`run_teacher` runs a teacher program on trainset examples on the cluster (chunked
tasks, ``_teacher_chunk`` on the workers) and returns one run per example: whether it
passed the metric and the predictor calls it made. :func:`bootstrap_runs` runs only the
examples that demo sets need: for each (trainset order, demo count) the first examples
of the order until that many runs have passed, in waves (a failed run asks for the next
example of its order in the next wave), as DSPy's serial loop stops at
``max_bootstrapped_demos``; runs are shared by every demo set that needs them.
:func:`assign_demos` builds a program's demos from the runs. :class:`Runtime` is how an
optimizer reaches the cluster and reports progress.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from foundation_dask.core._client import current_client
from foundation_dask.dspex.evaluate import (
    StoppedChunk,
    _carried_context,
    _inputs,
    _lm_context,
    checked_score,
    chunk_size_for,
)
from foundation_dask.dspex.interop._dspy import is_dspy_module
from foundation_dask.dspex.interop._pickling import ship
from foundation_dask.dspex.interop._programs import as_dspy_demos, capture_calls
from foundation_dask.dspex.primitives import Example
from foundation_dask.dspex.settings import context
from foundation_dask.dspex.snapshot import SettingsSnapshot, snapshot_settings
from foundation_dask.errors import BudgetExhaustedError, EvaluationError, OptimizationStopped

if TYPE_CHECKING:
    import distributed


@dataclass
class Runtime:
    """How an optimizer reaches the cluster and reports progress.

    Parameters
    ----------
    client
        Dask client (the current one by default).
    workers
        Restrict tasks to these workers (a capacity plan).
    on_progress
        Called with a dict after each finished chunk of evaluations.
    should_stop
        Polled between chunks; when it returns true the optimizer stops.
    display_progress
        Print a progress line.
    """

    client: distributed.Client | None = None
    workers: list[str] | None = None
    on_progress: Callable[[dict[str, Any]], None] | None = None
    should_stop: Callable[[], bool] | None = None
    display_progress: bool = False
    chunk_size: int | str = "auto"
    lm: Any = None
    evaluations: int = 0
    #: Teacher runs finished earlier, by trainset index (a resumed optimization).
    done_teacher: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Candidate evaluations finished earlier, by (candidate, example index).
    done_evals: dict[tuple[int, int], Any] = field(default_factory=dict)
    #: Called with each chunk of new teacher runs / (candidate, evaluation records).
    on_teacher_runs: Callable[[list[dict[str, Any]]], None] | None = None
    on_evaluations: Callable[[int, list[Any]], None] | None = None

    def get_client(self) -> distributed.Client:
        """The client: the one given, else the current one."""
        return self.client or current_client()

    #: What a pickled runtime keeps: how to run, not the run (its client, callbacks and
    #: finished work stay with the process and run that made them).
    _SETTINGS = ("workers", "display_progress", "chunk_size", "lm")

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._SETTINGS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]


def _examples_equal(a: Any, b: Any) -> bool:
    try:
        return a == b
    except Exception:
        return a is b


# --------------------------------------------------------------------------------------
# teacher runs


def _capture(program: Any, inputs: dict[str, Any]) -> tuple[Any, list[tuple[str, dict, dict]]]:
    """Run ``program`` and record every predictor call: (name, inputs, outputs)."""
    if is_dspy_module(program):  # its calls are in dspy.settings.trace
        return capture_calls(program, inputs)
    names = {id(pred): name for name, pred in program.named_predictors()}
    trace: list = []
    with context(trace=trace):
        prediction = program(**inputs)
    return prediction, [
        (names.get(id(pred), "?"), dict(ins), _as_dict(out)) for pred, ins, out in trace
    ]


def _as_dict(prediction: Any) -> dict[str, Any]:
    if hasattr(prediction, "toDict"):
        return prediction.toDict()
    return dict(prediction)


def _teacher_chunk(teacher: Any, examples: list[tuple[int, Any]], metric: Callable,
                   metric_threshold: float | None, lm: Any,
                   settings: SettingsSnapshot | None = None,
                   carried: SettingsSnapshot | None = None) -> list[dict[str, Any]]:
    """Runs on a worker: the teacher on each example, its own demo excluded, under the
    settings ``carried`` from where ``compile`` was called, then ``settings`` (the
    optimizer's ``teacher_settings``)."""
    out: list[dict[str, Any]] = []
    with _carried_context(carried), _lm_context(lm), _carried_context(settings):
        for index, example in examples:
            program = teacher.deepcopy()
            for _, pred in program.named_predictors():
                pred.demos = [d for d in pred.demos if not _examples_equal(d, example)]
            t0 = time.perf_counter()
            try:
                prediction, calls = _capture(program, _inputs(example))
                value = metric(example, prediction, calls)
                if isinstance(value, float):
                    value = checked_score(value, metric, index)
                ok = (value >= metric_threshold) if metric_threshold is not None else bool(value)
                error = None
            except BudgetExhaustedError as exc:
                return StoppedChunk(out, exc)  # not a failed run: no LM budget is left
            except Exception as exc:
                ok, calls, error = False, [], f"{type(exc).__name__}: {exc}"
                failure = _picklable(exc)
            else:
                failure = None
            run = {"index": index, "success": bool(ok), "calls": calls if ok else [],
                   "error": error, "duration": time.perf_counter() - t0}
            if failure is not None:
                run["exception"] = failure  # re-raised on the client by max_errors
            out.append(run)
    return out


def _picklable(exc: BaseException) -> BaseException | None:
    """``exc`` when it survives pickling (it travels back to the client), else None."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return None
    return exc


def run_teacher(teacher: Any, trainset: Sequence[Any], metric: Callable, *,
                metric_threshold: float | None = None, runtime: Runtime | None = None,
                max_errors: int | None = None, label: str = "bootstrap",
                settings: dict[str, Any] | None = None,
                client: distributed.Client | None = None,
                carried: SettingsSnapshot | None = None,
                indices: Sequence[int] | None = None,
                done: dict[int, dict[str, Any]] | None = None,
                more: Callable[[dict[int, dict[str, Any]]], Iterable[int]] | None = None,
                ) -> list[dict[str, Any]]:
    """Run the teacher on trainset examples on the cluster; results in trainset order.

    ``indices`` are the examples to run (default: all); ``done`` the runs made already
    (by :func:`bootstrap_runs`, or a resumed optimization), returned with the new ones
    and counted towards ``max_errors``; ``more``, called with the runs known (by
    example) each time a chunk comes back, names examples to run too (those not sent yet
    are sent at once, one per task). ``carried`` is the settings the runs start from
    (default: those in effect here); ``settings`` are DSPEx settings (``lm=``,
    ``adapter=``...) the teacher runs under on top of them; ``client`` is the Dask
    client to run on (default: the runtime's, else the current one).
    """
    from distributed import as_completed

    runtime = runtime or Runtime()
    client = client or runtime.get_client()
    done = {} if done is None else done
    wanted = range(len(trainset)) if indices is None else sorted(set(indices))
    indexed = [(i, trainset[i]) for i in wanted if i not in done]
    size = chunk_size_for(client, len(indexed), runtime.chunk_size, runtime.workers)
    carried = carried if carried is not None else snapshot_settings()
    teacher_settings = SettingsSnapshot(settings) if settings else None
    teacher = ship(teacher)  # a DSPy program: pickled once, a part that does not is named

    def send(chunk: list[tuple[int, Any]]) -> Any:
        return client.submit(_teacher_chunk, teacher, chunk, metric, metric_threshold,
                             runtime.lm, teacher_settings, carried, workers=runtime.workers,
                             allow_other_workers=runtime.workers is not None, pure=False)

    futures = [send(indexed[i:i + size]) for i in range(0, len(indexed), size)]
    sent = {i for i, _ in indexed} | set(done)
    results: list[dict[str, Any]] = list(done.values())
    errors = sum(1 for r in results if r["error"])
    first_failure: BaseException | None = None
    total = len(results) + len(indexed)
    out_of_budget: BaseException | None = None
    finished = as_completed(futures, loop=client.loop)
    try:
        for fut in finished:
            chunk = fut.result()
            if isinstance(chunk, StoppedChunk):  # the other chunks stop at their next call
                out_of_budget = out_of_budget or chunk.error
            failures = [r.pop("exception") for r in chunk if "exception" in r]
            first_failure = first_failure or (failures[0] if failures else None)
            results.extend(chunk)
            if runtime.on_teacher_runs is not None:
                runtime.on_teacher_runs(chunk)
            errors += sum(1 for r in chunk if r["error"])
            runtime.evaluations += len(chunk)
            if runtime.on_progress:
                runtime.on_progress({"phase": label, "done": len(results),
                                     "total": total, "evaluations": runtime.evaluations})
            if max_errors is not None and errors >= max_errors and errors:
                # as DSPy: stop at max_errors failed runs, raising the first run's error
                if first_failure is not None:
                    raise first_failure
                first = [r for r in results if r["error"]][:5]
                raise EvaluationError(
                    f"{label}: {errors} teacher runs failed (max_errors={max_errors}); first: "
                    + "; ".join(f"example {r['index']}: {r['error']}" for r in first),
                    label=label, failed=errors, max_errors=max_errors,
                )
            if runtime.should_stop and runtime.should_stop():
                raise OptimizationStopped(label)
            if more is not None and out_of_budget is None:
                for i in sorted(set(more({r["index"]: r for r in results})) - sent):
                    sent.add(i)
                    total += 1
                    futures.append(send([(i, trainset[i])]))
                    finished.add(futures[-1])
    finally:
        client.cancel([f for f in futures if not f.done()])
    if out_of_budget is not None:  # every run made is recorded (on_teacher_runs) first
        raise out_of_budget
    return sorted(results, key=lambda r: r["index"])


def _demos_from_calls(calls: list[tuple[str, dict, dict]], predictor_name: str) -> list[Any]:
    demos = []
    for name, inputs, outputs in calls:
        if name == predictor_name:
            demos.append(Example(**inputs, **outputs, augmented=True).with_inputs(*inputs))
    return demos


def assign_demos(student: Any, trainset: Sequence[Any], teacher_runs: list[dict[str, Any]],
                  order: Sequence[int], max_bootstrapped: int, max_labeled: int,
                  rng: random.Random) -> Any:
    """A copy of ``student`` with bootstrapped demos (taken in ``order``) and labelled ones.

    ``teacher_runs`` needs the runs of ``order``'s examples up to the
    ``max_bootstrapped``-th passing one (:func:`bootstrap_runs`); an example without a
    run is skipped.
    """
    program = student.reset_copy()
    by_index = {r["index"]: r for r in teacher_runs}
    used: list[int] = []
    augmented: dict[str, list[Any]] = {name: [] for name, _ in program.named_predictors()}
    for idx in order:
        if len(used) >= max_bootstrapped:
            break
        run = by_index.get(idx)
        if run is None or not run["success"]:
            continue
        used.append(idx)
        for name in augmented:
            augmented[name].extend(_demos_from_calls(run["calls"], name))
    raw = [ex for i, ex in enumerate(trainset) if i not in set(used)]
    rng.shuffle(raw)
    for name, pred in program.named_predictors():
        demos = augmented[name][:max_bootstrapped]
        pred.demos = demos + raw[: max(0, max_labeled - len(demos))]
        if is_dspy_module(program):  # DSPy's demos are dspy.Example objects
            pred.demos = as_dspy_demos(pred.demos)
    return program


def bootstrap_runs(teacher: Any, trainset: Sequence[Any], metric: Callable,
                   demands: Sequence[tuple[Sequence[int], int]], *,
                   runtime: Runtime | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The teacher runs that the demo sets ``demands`` need, in trainset order.

    Each demand is (trainset order, demo count): the runs of the order's first examples
    until ``count`` of them passed (or the order ends). Every example some demand needs,
    assuming the runs not known yet pass, is sent to the cluster at once; a run that
    fails makes its demand ask for its order's next example, sent as soon as the failure
    is known (no wave waits for another). Runs are shared between demands. ``kwargs`` go
    to :func:`run_teacher` (``max_errors`` counts failed runs over all of them).
    """
    runtime = runtime or Runtime()
    known: dict[int, dict[str, Any]] = dict(runtime.done_teacher)
    runtime.evaluations += len(known)

    def needed(runs: dict[int, dict[str, Any]]) -> set[int]:
        """The examples not in ``runs`` that some demand needs (unknown runs pass)."""
        need: set[int] = set()
        for order, count in demands:
            passed = 0
            for idx in order:
                if passed >= count:
                    break
                run = runs.get(idx)
                if run is None:
                    need.add(idx)
                passed += 1 if run is None or run["success"] else 0
        return need

    while True:
        need = needed(known)
        if not need:
            return sorted(known.values(), key=lambda r: r["index"])
        runs = run_teacher(teacher, trainset, metric, runtime=runtime, indices=sorted(need),
                           done=known, more=needed, **kwargs)
        known.update((r["index"], r) for r in runs)
