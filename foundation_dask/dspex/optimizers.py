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

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from foundation_dask.dspex.bootstrap import (
    Runtime,
    assign_demos,
    bootstrap_runs,
)
from foundation_dask.dspex.callbacks import with_compile_callbacks
from foundation_dask.dspex.evaluate import EvaluationResult, evaluate_many
from foundation_dask.dspex.lm.budget import estimate
from foundation_dask.dspex.racing import RaceRound, race
from foundation_dask.dspex.snapshot import SettingsSnapshot, snapshot_settings
from foundation_dask.errors import BudgetExhaustedError, OptimizationStopped

if TYPE_CHECKING:
    import distributed
    import pandas as pd

__all__ = ["BootstrapFewShot", "BootstrapFewShotWithRandomSearch", "Candidate",
           "LabeledFewShot", "Runtime", "Teleprompter"]

logger = logging.getLogger(__name__)

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

    def runs(self, student: Any, teacher: Any | None, trainset: Sequence[Any],
             demands: Sequence[tuple[Sequence[int], int]],
             client: distributed.Client | None = None,
             carried: SettingsSnapshot | None = None) -> list[dict[str, Any]]:
        """The teacher runs the demo sets ``demands`` ((order, demo count) each) need,
        made on the cluster (:func:`~foundation_dask.dspex.bootstrap.bootstrap_runs`)."""
        return bootstrap_runs(
            self._teacher(student, teacher, trainset), trainset, self.metric, demands,
            runtime=self.runtime, metric_threshold=self.metric_threshold,
            max_errors=self.max_errors, settings=self.teacher_settings, client=client,
            carried=carried if carried is not None else snapshot_settings(),
        )

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
        order = list(order) if order is not None else list(range(len(trainset)))
        if teacher_runs is None:  # as DSPy: the teacher runs until enough demos passed
            teacher_runs = self.runs(student, teacher, trainset,
                                     [(order, self.max_bootstrapped_demos)], client=client)
        program = assign_demos(student, trainset, teacher_runs, order,
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


def same_programs(programs: Sequence[Any]) -> dict[int, int]:
    """Position -> the first earlier position holding the same program: the same
    predictors' states (demos, instructions, signatures; :meth:`dump_state`) and LMs
    (``repr``: model and generation arguments). Programs that cannot say are unique."""
    first: dict[str, int] = {}
    same: dict[int, int] = {}
    for p, program in enumerate(programs):
        try:
            key = json.dumps([type(program).__qualname__, program.dump_state(),
                              [repr(getattr(pred, "lm", None))
                               for _, pred in program.named_predictors()]],
                             sort_keys=True, default=repr)
        except Exception:  # a program without dump_state / named_predictors
            continue
        if key in first:
            same[p] = first[key]
        else:
            first[key] = p
    return same


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
    racing
        Race the candidates (:mod:`~foundation_dask.dspex.racing`, the default): each
        candidate stops as soon as it cannot win, so the search returns the program
        (and score) exhaustive search returns, for fewer LM calls. ``False`` evaluates
        every candidate on every example (DSPy's search).
    racing_confidence
        1 (the default): only candidates that cannot win stop. Below 1 (0.5-1), a
        candidate also stops once another is better on the same examples with that
        confidence: fewer calls still, at the risk of stopping the candidate exhaustive
        search would have chosen.
    """

    def __init__(self, metric: Callable, *, teacher_settings: dict | None = None,
                 max_bootstrapped_demos: int = 4, max_labeled_demos: int = 16,
                 max_rounds: int = 1, num_candidate_programs: int = 16,
                 num_threads: int | None = None, max_errors: int | None = None,
                 stop_at_score: float | None = None, metric_threshold: float | None = None,
                 min_num_samples: int = 1, seed: int = 0, runtime: Runtime | None = None,
                 racing: bool = True, racing_confidence: float = 1.0):
        if not 0.5 <= racing_confidence <= 1:
            raise ValueError(f"racing_confidence must be between 0.5 and 1, not "
                             f"{racing_confidence}")
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
        self.racing = racing
        self.racing_confidence = racing_confidence
        self.runtime = runtime or Runtime()
        self.candidates: list[Candidate] = []
        self.history: list[dict[str, Any]] = []
        self.standings: list[Any] = []  # racing.Standing per candidate of the last race

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
        shuffled = []  # (seed, order, demo count) of each shuffled candidate
        for s in range(self.num_candidate_programs):
            rng = random.Random(self.seed * 10_007 + s)
            order = list(range(len(trainset)))
            rng.shuffle(order)
            size = rng.randint(self.min_num_samples, max(self.min_num_samples,
                                                         self.max_bootstrapped_demos))
            shuffled.append((s, order, size))
        if teacher_runs is None:  # only the runs some candidate's demos need, made once
            demands = [(range(len(trainset)), self.max_bootstrapped_demos)]
            teacher_runs = boot.runs(student, teacher, trainset,
                                     demands + [(o, n) for _, o, n in shuffled],
                                     client=client, carried=carried)
        self.teacher_runs = teacher_runs
        candidates = [
            Candidate(-3, "zero-shot", student.reset_copy()),
            Candidate(-2, "labeled", LabeledFewShot(k=self.max_labeled_demos, seed=self.seed)
                      .compile(student, trainset=trainset)),
            Candidate(-1, "bootstrapped", boot.compile(student, trainset=trainset,
                                                       teacher_runs=teacher_runs)),
        ]
        for s, order, size in shuffled:
            program = assign_demos(student, trainset, teacher_runs, order, size,
                                   self.max_labeled_demos, random.Random(self.seed * 10_007 + s))
            program._compiled = True
            candidates.append(Candidate(s, f"bootstrapped x{size}", program))
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
        self.stopped_reason: str | None = None  # why it stopped early (the LM budget ran out)
        self.predicted_cost = estimate(
            candidates=3 + self.num_candidate_programs if seeds is None
            else len(seeds & set(range(-3, self.num_candidate_programs))),
            valset=len(valset), teacher_runs=len(trainset),
            calls_per_run=len(student.named_predictors()), label="random search")
        try:
            self.candidates = self.candidate_programs(student, trainset, teacher, client=client,
                                                      carried=carried)
        except BudgetExhaustedError as exc:  # a teacher run raised it (max_errors)
            self.candidates, self.history = [], []
            return self._out_of_budget(exc, student)
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
        common = dict(max_errors=self.max_errors, chunk_size=runtime.chunk_size,
                      display_progress=runtime.display_progress, workers=runtime.workers,
                      lm=runtime.lm, label="random search", on_record=on_record,
                      on_chunk=on_progress, on_records=runtime.on_evaluations,
                      done=runtime.done_evals, carried=carried)
        programs = [c.program for c in self.candidates]
        self.standings = []
        if self.racing:
            def on_round(rnd: RaceRound) -> None:
                if runtime.on_progress and rnd.stopped:
                    runtime.on_progress({"phase": "random search", "round": rnd.round,
                                         "examples": rnd.examples, "stopped": rnd.stopped,
                                         "running": len(rnd.running) - len(rnd.stopped)})

            try:
                results, self.standings, _ = race(
                    client, programs, valset, self.metric, confidence=self.racing_confidence,
                    seed=self.seed, on_round=on_round, same_as=same_programs(programs),
                    **common)
            except BudgetExhaustedError as exc:
                return self._out_of_budget(exc, student)
        else:
            try:
                results = evaluate_many(client, programs, valset, self.metric, **common)
            except BudgetExhaustedError as exc:
                return self._out_of_budget(exc, student)
        chosen: Candidate | None = None
        for p, (cand, res) in enumerate(zip(self.candidates, results, strict=True)):
            # a candidate the race stopped before its first example has no score
            cand.score, cand.evaluation = (res.score if res.records else None), res
            if self.standings and self.standings[p].stopped_after is not None:
                continue  # stopped in the race: its score is on a slice of the set
            # the highest score, the first candidate on ties (as DSPy); scores may be < 0
            if chosen is None or res.score > cast(float, chosen.score):
                chosen = cand
        assert chosen is not None  # restrict keeps at least one candidate; a race one
        program = chosen.program
        program.candidate_programs = [
            {"seed": c.seed, "kind": c.kind, "score": c.score,
             "examples": len(c.evaluation.records) if c.evaluation else 0,
             **({"stopped_after": st.stopped_after, "reason": st.reason}
                if (st := self.standings[p] if self.standings else None) else {})}
            for p, c in enumerate(self.candidates)
        ]
        program.score = chosen.score
        logger.info("Random search: best candidate seed %s (%s) with %.2f", chosen.seed,
                    chosen.kind, chosen.score)
        self.actual_cost = self.predicted_cost.actual()
        return program

    def _out_of_budget(self, exc: BudgetExhaustedError, student: Any) -> Any:
        """The search ran out of LM budget: of the candidates evaluated on at least half
        as many examples as the most evaluated one, the one with the best mean (the
        student when none was evaluated), with ``stopped_reason``."""
        scores: dict[int, list[float]] = {}
        for h in self.history:
            scores.setdefault(h["candidate"], []).append(h["score"])
        means = {p: 100.0 * sum(v) / len(v) for p, v in scores.items()}
        most = max((len(v) for v in scores.values()), default=0)
        best = max((p for p in means if 2 * len(scores[p]) >= most),
                   key=lambda p: (means[p], -p), default=None)
        program = student.reset_copy() if best is None else self.candidates[best].program
        program.score = None if best is None else round(means[best], 2)
        program.candidate_programs = [
            {"seed": c.seed, "kind": c.kind, "examples": len(scores.get(p, [])),
             "score": round(means[p], 2) if p in means else None}
            for p, c in enumerate(self.candidates)]
        self.stopped_reason = program.stopped_reason = str(exc)
        logger.warning("Random search stopped early: %s Returning the best program so far "
                       "(score %s on the examples evaluated).", self.stopped_reason,
                       program.score)
        self.actual_cost = self.predicted_cost.actual()
        return program

    def history_frame(self) -> pd.DataFrame:
        """Every evaluation of the last compile: candidate, example, score, worker."""
        import pandas as pd

        return pd.DataFrame(self.history)
