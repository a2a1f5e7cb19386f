"""Client and worker: few-shot optimizers whose work is scattered over the cluster.

* :class:`LabeledFewShot`: demos sampled from the labelled trainset.
* :class:`BootstrapFewShot`: a teacher program runs on the trainset and the traces of
  the runs that pass the metric become demos. The teacher runs go to the cluster in
  parallel (chunked tasks), unlike DSPy's serial loop; demos are then taken in
  trainset order, so the result is the same as the serial loop's.
* :class:`BootstrapFewShotWithRandomSearch`: candidate programs (zero-shot, labelled
  only, bootstrapped, and bootstrapped from shuffled trainsets with random demo
  counts), all evaluated on the validation set at once: every (candidate, example)
  evaluation is in flight together, not one candidate after another. The teacher's
  runs are shared between candidates (they do not depend on the candidate), so the
  trainset is bootstrapped once.

Settings: what ``dspex.configure`` and the enclosing ``dspex.context`` blocks set where
``compile`` is called (the LM, adapter, cache switch...) is in effect in every teacher
run and evaluation on the workers (:mod:`~foundation_dask.dspex.snapshot`);
``teacher_settings`` apply on top of them in the teacher runs. A metric that returns
NaN or an infinite value fails that run or evaluation (counted in its errors).

Every optimizer is seeded: the same seed gives the same best program. ``compile`` runs
on the client; the teacher runs (``_teacher_chunk``) and the evaluations are tasks on
the workers.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from foundation_dask.core._client import current_client, worker_infos
from foundation_dask.dspex.callbacks import with_compile_callbacks
from foundation_dask.dspex.evaluate import (
    EvaluationResult,
    _carried_context,
    _inputs,
    _lm_context,
    auto_chunk_size,
    checked_score,
    evaluate_many,
)
from foundation_dask.dspex.interop._dspy import is_dspy_module
from foundation_dask.dspex.interop._pickling import ship
from foundation_dask.dspex.interop._programs import as_dspy_demos, capture_calls
from foundation_dask.dspex.primitives import Example
from foundation_dask.dspex.settings import context
from foundation_dask.dspex.snapshot import SettingsSnapshot, snapshot_settings
from foundation_dask.errors import EvaluationError, OptimizationStopped

if TYPE_CHECKING:
    import distributed
    import pandas as pd

logger = logging.getLogger(__name__)


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
    out = []
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
                carried: SettingsSnapshot | None = None) -> list[dict[str, Any]]:
    """Run the teacher on every trainset example on the cluster; results in trainset order.

    ``carried`` is the settings the runs start from (default: those in effect here);
    ``settings`` are DSPEx settings (``lm=``, ``adapter=``...) the teacher runs under on
    top of them; ``client`` is the Dask client to run on (default: the runtime's, else
    the current one).
    """
    from distributed import as_completed

    runtime = runtime or Runtime()
    client = client or runtime.get_client()
    n_workers = len(runtime.workers or worker_infos(client)) or 1
    size = (auto_chunk_size(len(trainset), n_workers) if runtime.chunk_size == "auto"
            else int(runtime.chunk_size))
    carried = carried if carried is not None else snapshot_settings()
    teacher_settings = SettingsSnapshot(settings) if settings else None
    indexed = [(i, ex) for i, ex in enumerate(trainset) if i not in runtime.done_teacher]
    teacher = ship(teacher)  # a DSPy program: pickled once, a part that does not is named
    futures = [
        client.submit(_teacher_chunk, teacher, indexed[i:i + size], metric, metric_threshold,
                      runtime.lm, teacher_settings, carried, workers=runtime.workers,
                      allow_other_workers=runtime.workers is not None, pure=False)
        for i in range(0, len(indexed), size)
    ]
    results: list[dict[str, Any]] = list(runtime.done_teacher.values())
    errors = sum(1 for r in results if r["error"])
    first_failure: BaseException | None = None
    runtime.evaluations += len(results)
    try:
        for fut in as_completed(futures):
            chunk = fut.result()
            failures = [r.pop("exception") for r in chunk if "exception" in r]
            first_failure = first_failure or (failures[0] if failures else None)
            results.extend(chunk)
            if runtime.on_teacher_runs is not None:
                runtime.on_teacher_runs(chunk)
            errors += sum(1 for r in chunk if r["error"])
            runtime.evaluations += len(chunk)
            if runtime.on_progress:
                runtime.on_progress({"phase": label, "done": len(results),
                                     "total": len(trainset), "evaluations": runtime.evaluations})
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
    finally:
        client.cancel([f for f in futures if not f.done()])
    return sorted(results, key=lambda r: r["index"])


def _demos_from_calls(calls: list[tuple[str, dict, dict]], predictor_name: str) -> list[Any]:
    demos = []
    for name, inputs, outputs in calls:
        if name == predictor_name:
            demos.append(Example(**inputs, **outputs, augmented=True).with_inputs(*inputs))
    return demos


def _assign_demos(student: Any, trainset: Sequence[Any], teacher_runs: list[dict[str, Any]],
                  order: Sequence[int], max_bootstrapped: int, max_labeled: int,
                  rng: random.Random) -> Any:
    """A copy of ``student`` with bootstrapped demos (taken in ``order``) and labelled ones."""
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


# --------------------------------------------------------------------------------------
# optimizers


class Teleprompter:
    """Base class: ``compile(student, trainset=...) -> program``."""

    runtime: Runtime

    def __init__(self) -> None:
        pass

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # callbacks' on_compile_start / on_compile_end around the compile a class defines
        if "compile" in cls.__dict__:
            cls.compile = with_compile_callbacks(cls.__dict__["compile"])  # type: ignore[method-assign]

    def get_params(self) -> dict[str, Any]:
        """The optimizer's parameters (its attributes), as DSPy's ``get_params``."""
        return dict(self.__dict__)

    def compile(self, student: Any, *, trainset: Sequence[Any],
                client: distributed.Client | None = None, **kwargs: Any) -> Any:
        """The optimized copy of ``student``.

        Parameters
        ----------
        student
            The program to optimize (not modified).
        trainset
            Labelled examples.
        client
            The Dask client to run on; by default the runtime's, else the current one
            (the default client, else the one :func:`foundation_dask.connect` opens).
        **kwargs
            Arguments of the optimizer (``teacher=``, ``valset=``...).
        """
        raise NotImplementedError


class LabeledFewShot(Teleprompter):
    """Demos sampled at random (seeded) from the labelled trainset.

    Parameters
    ----------
    k
        Demos per predictor.
    """

    def __init__(self, k: int = 16, seed: int = 0):
        if k < 0:
            raise ValueError(f"k must be >= 0, not {k}")
        self.k = k
        self.seed = seed

    def compile(self, student: Any, *, trainset: Sequence[Any], sample: bool = True,
                client: distributed.Client | None = None, **kwargs: Any) -> Any:
        """A copy of ``student`` with ``k`` labelled demos per predictor.

        ``sample=False`` takes the first ``k`` examples instead of a seeded sample.
        Nothing runs on the cluster, so ``client`` is not used.
        """
        program = student.reset_copy()
        if not trainset or self.k == 0:
            return program
        rng = random.Random(self.seed)
        for _, pred in program.named_predictors():
            pred.demos = (rng.sample(list(trainset), min(self.k, len(trainset))) if sample
                          else list(trainset)[: self.k])
        return program


class BootstrapFewShot(Teleprompter):
    """Bootstrapped demos: traces of teacher runs that pass the metric.

    Parameters
    ----------
    metric
        ``metric(example, prediction, trace) -> float | bool``.
    metric_threshold
        Minimum metric value of a passing run (default: truthiness).
    max_bootstrapped_demos, max_labeled_demos
        Demos per predictor from teacher traces, and from the labelled trainset.
    max_errors
        Stop once this many teacher runs raised, raising the first run's error (as
        DSPy does).
    teacher_settings
        DSPEx settings (``lm=``...) the teacher runs under, e.g. a stronger LM.
    runtime
        Cluster placement and progress (:class:`Runtime`).
    """

    def __init__(self, metric: Callable, *, metric_threshold: float | None = None,
                 teacher_settings: dict | None = None, max_bootstrapped_demos: int = 4,
                 max_labeled_demos: int = 16, max_rounds: int = 1,
                 max_errors: int | None = None, seed: int = 0,
                 runtime: Runtime | None = None):
        if max_rounds != 1:
            raise ValueError(
                "max_rounds > 1 is not supported: teacher runs are deterministic here "
                "(temperature 0, cached), so further rounds would repeat the first."
            )
        self.metric = metric
        self.metric_threshold = metric_threshold
        self.teacher_settings = teacher_settings or {}
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_errors = max_errors
        self.seed = seed
        self.runtime = runtime or Runtime()

    def _teacher(self, student: Any, teacher: Any | None, trainset: Sequence[Any]) -> Any:
        teacher = (teacher or student).deepcopy()
        if self.max_labeled_demos and not any(p.demos for _, p in teacher.named_predictors()):
            teacher = LabeledFewShot(k=self.max_labeled_demos).compile(
                teacher, trainset=trainset
            )
        return teacher

    def compile(self, student: Any, *, trainset: Sequence[Any], teacher: Any | None = None,
                teacher_runs: list[dict[str, Any]] | None = None,
                order: Sequence[int] | None = None,
                client: distributed.Client | None = None, **kwargs: Any) -> Any:
        """A copy of ``student`` with bootstrapped and labelled demos.

        Parameters
        ----------
        student, trainset
            The program and its labelled examples.
        teacher
            The program that runs on the trainset (default: ``student`` with labelled
            demos).
        teacher_runs, order
            Teacher runs made already (then nothing runs on the cluster), and the
            trainset order demos are taken in.
        client
            The Dask client to run on; by default the runtime's, else the current one.
        """
        trainset = list(trainset)
        if not trainset:
            raise ValueError("BootstrapFewShot needs a non-empty trainset")
        if teacher_runs is None:
            teacher_runs = run_teacher(
                self._teacher(student, teacher, trainset), trainset, self.metric,
                metric_threshold=self.metric_threshold, runtime=self.runtime,
                max_errors=self.max_errors, settings=self.teacher_settings, client=client,
                carried=snapshot_settings(),
            )
        order = list(order) if order is not None else list(range(len(trainset)))
        program = _assign_demos(student, trainset, teacher_runs, order,
                                self.max_bootstrapped_demos, self.max_labeled_demos,
                                random.Random(self.seed))
        program._compiled = True
        return program


@dataclass
class Candidate:
    """One candidate program of a random search."""

    seed: int
    kind: str
    program: Any
    score: float | None = None
    evaluation: EvaluationResult | None = None


class BootstrapFewShotWithRandomSearch(Teleprompter):
    """Random search over bootstrapped demo sets, every candidate evaluated at once.

    Candidates (as in DSPy): seed -3 zero-shot, -2 labelled demos only, -1 bootstrapped
    in trainset order, then ``num_candidate_programs`` bootstrapped from a trainset
    shuffled with their seed, with a random number of demos in
    ``[min_num_samples, max_bootstrapped_demos]``.

    Parameters
    ----------
    metric
        ``metric(example, prediction, trace=None)``.
    num_candidate_programs
        Shuffled candidates beyond the three fixed ones.
    seed
        Base seed; the same seed gives the same best program.
    teacher_settings
        DSPEx settings (``lm=``...) the teacher runs under while bootstrapping.
    stop_at_score
        Not supported: every candidate is evaluated at once, so there is no "next
        candidate" to skip; passing a value raises ``ValueError``.
    num_threads
        Accepted for DSPy compatibility; the cluster decides parallelism.
    """

    def __init__(self, metric: Callable, *, teacher_settings: dict | None = None,
                 max_bootstrapped_demos: int = 4, max_labeled_demos: int = 16,
                 max_rounds: int = 1, num_candidate_programs: int = 16,
                 num_threads: int | None = None, max_errors: int | None = None,
                 stop_at_score: float | None = None, metric_threshold: float | None = None,
                 min_num_samples: int = 1, seed: int = 0, runtime: Runtime | None = None):
        if num_candidate_programs < 0:
            raise ValueError(f"num_candidate_programs must be >= 0, not {num_candidate_programs}")
        if stop_at_score is not None:
            raise ValueError(
                "stop_at_score is not supported: all candidates are evaluated at the same time "
                "(leave it out; the best candidate is chosen once all are scored)."
            )
        if max_rounds != 1:
            raise ValueError(
                "max_rounds > 1 is not supported: teacher runs are deterministic here "
                "(temperature 0, cached), so further rounds would repeat the first."
            )
        self.metric = metric
        self.teacher_settings = teacher_settings or {}
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.num_candidate_programs = num_candidate_programs
        self.max_errors = max_errors
        self.metric_threshold = metric_threshold
        self.min_num_samples = min_num_samples
        self.seed = seed
        self.runtime = runtime or Runtime()
        self.candidates: list[Candidate] = []
        self.history: list[dict[str, Any]] = []

    def candidate_programs(self, student: Any, trainset: Sequence[Any],
                           teacher: Any | None = None,
                           teacher_runs: list[dict[str, Any]] | None = None,
                           client: distributed.Client | None = None,
                           carried: SettingsSnapshot | None = None) -> list[Candidate]:
        """Build every candidate (one shared, parallel teacher pass over the trainset), the
        teacher running under ``carried`` (default: the settings in effect here)."""
        trainset = list(trainset)
        boot = BootstrapFewShot(
            self.metric, metric_threshold=self.metric_threshold,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            max_labeled_demos=self.max_labeled_demos, max_errors=self.max_errors,
            seed=self.seed, runtime=self.runtime, teacher_settings=self.teacher_settings,
        )
        if teacher_runs is None:
            teacher_runs = run_teacher(
                boot._teacher(student, teacher, trainset), trainset, self.metric,
                metric_threshold=self.metric_threshold, runtime=self.runtime,
                max_errors=self.max_errors, settings=boot.teacher_settings, client=client,
                carried=carried,
            )
        self.teacher_runs = teacher_runs
        candidates = [
            Candidate(-3, "zero-shot", student.reset_copy()),
            Candidate(-2, "labeled", LabeledFewShot(k=self.max_labeled_demos, seed=self.seed)
                      .compile(student, trainset=trainset)),
            Candidate(-1, "bootstrapped", boot.compile(student, trainset=trainset,
                                                       teacher_runs=teacher_runs)),
        ]
        for s in range(self.num_candidate_programs):
            rng = random.Random(self.seed * 10_007 + s)
            order = list(range(len(trainset)))
            rng.shuffle(order)
            size = rng.randint(self.min_num_samples, max(self.min_num_samples,
                                                         self.max_bootstrapped_demos))
            shuffled = BootstrapFewShot(
                self.metric, metric_threshold=self.metric_threshold,
                max_bootstrapped_demos=size, max_labeled_demos=self.max_labeled_demos,
                seed=self.seed * 10_007 + s, runtime=self.runtime,
            )
            candidates.append(Candidate(s, f"bootstrapped x{size}", shuffled.compile(
                student, trainset=trainset, teacher_runs=teacher_runs, order=order)))
        return candidates

    def compile(self, student: Any, *, trainset: Sequence[Any], teacher: Any | None = None,
                valset: Sequence[Any] | None = None, restrict: Any = None,
                client: distributed.Client | None = None, **kwargs: Any) -> Any:
        """The best candidate program on ``valset``, with ``score`` and ``candidate_programs``.

        ``restrict`` (seeds, as DSPy's: -3 zero-shot, -2 labelled, -1 bootstrapped, then
        0, 1...) keeps only those candidates; ``ValueError`` if it names none of them.

        Parameters
        ----------
        student, trainset
            The program and its labelled examples.
        teacher
            The program that bootstraps the demos (default: ``student``).
        valset
            Where candidates are scored (default: the trainset).
        client
            The Dask client to run on; by default the runtime's, else the current one
            (the default client, else the one :func:`foundation_dask.connect` opens).
        """
        trainset = list(trainset)
        if not trainset:
            raise ValueError("BootstrapFewShotWithRandomSearch needs a non-empty trainset")
        valset = list(valset) if valset is not None else trainset
        seeds = None if restrict is None else set(restrict)
        if seeds is not None and not seeds & set(range(-3, self.num_candidate_programs)):
            raise ValueError(
                f"restrict={sorted(seeds)} matches no candidate seed: seeds run from -3 to "
                f"{self.num_candidate_programs - 1}")
        carried = snapshot_settings()
        runtime = self.runtime
        client = client or runtime.get_client()
        self.candidates = self.candidate_programs(student, trainset, teacher, client=client,
                                                  carried=carried)
        if seeds is not None:
            self.candidates = [c for c in self.candidates if c.seed in seeds]
        history: list[dict[str, Any]] = []
        self.history = history

        per_candidate: dict[int, list[float]] = {}

        def on_record(p: int, record) -> None:
            per_candidate.setdefault(p, []).append(record.score)
            runtime.evaluations += 1
            history.append({"evaluation": runtime.evaluations, "candidate": p,
                            "seed": self.candidates[p].seed, "index": record.index,
                            "score": record.score, "worker": record.worker,
                            "duration": record.duration, "error": record.error})
            if runtime.should_stop and runtime.should_stop():
                raise OptimizationStopped("random search")

        def on_progress(results_so_far: dict[str, Any]) -> None:
            if runtime.on_progress:
                means = [100.0 * sum(v) / len(v) for v in per_candidate.values() if v]
                runtime.on_progress({**results_so_far,
                                     "best_score": round(max(means), 2) if means else None})

        for (p, _), record in sorted(runtime.done_evals.items()):
            history.append({"evaluation": len(history) + 1, "candidate": p,
                            "seed": self.candidates[p].seed, "index": record.index,
                            "score": record.score, "worker": record.worker,
                            "duration": record.duration, "error": record.error})
        runtime.evaluations += len(runtime.done_evals)
        results = evaluate_many(
            client, [c.program for c in self.candidates], valset, self.metric,
            max_errors=self.max_errors, chunk_size=runtime.chunk_size,
            display_progress=runtime.display_progress, workers=runtime.workers, lm=runtime.lm,
            label="random search", on_record=on_record, on_chunk=on_progress,
            on_records=runtime.on_evaluations, done=runtime.done_evals, carried=carried,
        )
        chosen: Candidate | None = None
        for cand, res in zip(self.candidates, results, strict=True):
            cand.score, cand.evaluation = res.score, res
            # the highest score, the first candidate on ties (as DSPy); scores may be < 0
            if chosen is None or res.score > cast(float, chosen.score):
                chosen = cand
        assert chosen is not None  # restrict keeps at least one candidate
        program = chosen.program
        program.candidate_programs = [
            {"seed": c.seed, "kind": c.kind, "score": c.score} for c in self.candidates
        ]
        program.score = chosen.score
        logger.info("Random search: best candidate seed %s (%s) with %.2f", chosen.seed,
                    chosen.kind, chosen.score)
        return program

    def history_frame(self) -> pd.DataFrame:
        """Every evaluation of the last compile: candidate, example, score, worker."""
        import pandas as pd

        return pd.DataFrame(self.history)
