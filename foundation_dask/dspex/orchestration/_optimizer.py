"""Client: distributed optimization, the Elixir ``DSPEx.DistributedOptimizer``.

``DistributedOptimizer.optimize_program_distributed`` plans capacity from the cluster's
health (:mod:`~foundation_dask.dspex.orchestration._plan`), starts a supervised
coordinator per optimization (:class:`OptimizationCoordinator`, on a worker), registers
its evaluation workers in the service mesh (capabilities ``dspy_evaluation`` and
``ai_optimization``), runs the optimizer with its evaluations scattered over the planned
workers, reports progress on the ``telemetry`` channel and honours ``stop`` /
``scale`` requests from ``control``. ``DistributedOptimizer.resume`` continues an
interrupted optimization from what its coordinator kept.

The DSPEx settings in effect where the optimization is called (``dspex.configure``,
``with dspex.context``) are in effect in every one of its tasks, on every worker; the
coordinator's resume spec keeps them, so a resumed optimization runs under them too
(with the settings set where ``resume`` is called on top).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

import cloudpickle

from foundation_dask._html import html_repr
from foundation_dask.core._client import current_client
from foundation_dask.core.channels import Channels, Message, Subscription
from foundation_dask.core.health import ClusterHealth, HealthMonitor
from foundation_dask.core.processes import ProcessManager, SingletonHandle
from foundation_dask.core.registry import ServiceMesh
from foundation_dask.dspex.evaluate import EvaluationRecord
from foundation_dask.dspex.optimizers import BootstrapFewShotWithRandomSearch, Runtime
from foundation_dask.dspex.orchestration._coordinator import OptimizationCoordinator
from foundation_dask.dspex.orchestration._names import CAPABILITIES, coordinator_name
from foundation_dask.dspex.orchestration._plan import (
    CapacityPlan,
    calculate_optimal_distribution,
)
from foundation_dask.dspex.orchestration._scaling import scale_cluster
from foundation_dask.dspex.settings import context, settings
from foundation_dask.dspex.snapshot import SettingsSnapshot, snapshot_settings
from foundation_dask.errors import BudgetExhaustedError, OptimizationStopped, ProcessNotFoundError
from foundation_dask.scope.tracing import trace as scope_trace
from foundation_dask.tracecontext import current as current_trace

if TYPE_CHECKING:
    import distributed
    import pandas as pd

__all__ = ["DistributedOptimizer", "OptimizationResult"]

logger = logging.getLogger(__name__)


@dataclass
class OptimizationResult:
    """What an optimization returns: the best program, its score and its history."""

    optimization_id: str
    status: str
    best_program: Any
    best_score: float | None
    plan: CapacityPlan
    wall_time: float
    history: pd.DataFrame
    candidates: pd.DataFrame
    scaling_log: list[dict[str, Any]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    trace_id: str | None = None
    #: Evaluations (teacher runs included) found done when it started: > 0 when resumed.
    resumed_from: int = 0
    #: Why it stopped before the end (``status="stopped"``): a stop request, the timeout,
    #: or the LM budget (``dspex.Budget``) running out; ``None`` when it completed.
    stopped_reason: str | None = None

    def __repr__(self) -> str:
        return (f"OptimizationResult({self.optimization_id}, status={self.status}, "
                f"best_score={self.best_score}, evaluations={len(self.history)}, "
                f"wall_time={self.wall_time:.1f}s)")

    def _repr_html_(self) -> str:
        shown = self.candidates.head(20)
        return html_repr(
            repr(self), f"Optimization {self.optimization_id}",
            summary=(f"{self.status}, best score {self.best_score}, {len(self.history)} "
                     f"evaluations on {self.plan.total_workers} evaluation workers in "
                     f"{self.wall_time:.1f} s"),
            header=list(shown.columns), rows=shown.itertuples(index=False))


class DistributedOptimizer:
    """Optimize a program across the cluster (see the module docstring).

    A namespace class, as the seed's ``DSPEx.DistributedOptimizer`` module: its functions
    are static methods (``dspex.DistributedOptimizer.optimize_program_distributed(...)``)
    and it has no instances.
    """

    @staticmethod
    def optimize_program_distributed(
        program: Any, trainset: Sequence[Any], metric: Callable, *,
        max_workers: int | str = "auto", min_workers_per_node: int = 1,
        timeout: float | None = 300.0, optimizer: Any = None,
        valset: Sequence[Any] | None = None, seed: int = 0, num_candidate_programs: int = 8,
        max_bootstrapped_demos: int = 4, max_labeled_demos: int = 16,
        display_progress: bool = True, optimization_id: str | None = None, lm: Any = None,
        adaptive_workers: bool = False, trace: bool = False,
        client: distributed.Client | None = None, _monitor: Callable | None = None,
    ) -> OptimizationResult:
        """Run an optimization with a capacity plan, a coordinator and live progress.

        Parameters
        ----------
        program, trainset, metric
            What to optimize, on which examples, judged how.
        max_workers, min_workers_per_node
            The capacity plan (``"auto"``: 80% of the available capacity).
        timeout
            Seconds after which the optimization stops with the best program so far.
        optimizer
            A teleprompter (default :class:`BootstrapFewShotWithRandomSearch` with
            ``num_candidate_programs`` and ``seed``); its ``runtime`` is replaced.
        lm
            Run the programs under ``dspex.context(lm=lm)`` on the workers (by default
            they run under the settings in effect here: ``dspex.configure(lm=...)``,
            ``with dspex.context(lm=...)``).
        trace
            Trace the whole optimization with ElixirScope (``result.trace_id``): the
            coordinator, every evaluation chunk and example, every LM call (latency,
            tokens, cache hit), lost tasks and their re-runs. Inside an open
            ``scope.trace`` block the optimization joins that trace anyway.
        client
            The Dask client to run on; by default the current one (the default client,
            else the one :func:`foundation_dask.connect` opens).

        Returns
        -------
        OptimizationResult
        """
        client = client or current_client()
        opt_id = optimization_id or uuid.uuid4().hex[:10]
        if trace and current_trace() is None:
            with scope_trace(f"optimization {opt_id}", client=client,
                             optimization_id=opt_id) as t:
                result = DistributedOptimizer.optimize_program_distributed(
                    program, trainset, metric, max_workers=max_workers,
                    min_workers_per_node=min_workers_per_node, timeout=timeout,
                    optimizer=optimizer, valset=valset, seed=seed,
                    num_candidate_programs=num_candidate_programs,
                    max_bootstrapped_demos=max_bootstrapped_demos,
                    max_labeled_demos=max_labeled_demos, display_progress=display_progress,
                    optimization_id=opt_id, lm=lm, adaptive_workers=adaptive_workers,
                    client=client, _monitor=_monitor,
                )
            result.trace_id = t.trace_id
            return result
        return DistributedOptimizer._optimize(
            program, trainset, metric, max_workers=max_workers,
            min_workers_per_node=min_workers_per_node, timeout=timeout, optimizer=optimizer,
            valset=valset, seed=seed, num_candidate_programs=num_candidate_programs,
            max_bootstrapped_demos=max_bootstrapped_demos, max_labeled_demos=max_labeled_demos,
            display_progress=display_progress, opt_id=opt_id, lm=lm,
            adaptive_workers=adaptive_workers, client=client, _monitor=_monitor,
        )

    @staticmethod
    def _optimize(program: Any, trainset: Sequence[Any], metric: Callable, *,
                  max_workers: int | str, min_workers_per_node: int, timeout: float | None,
                  optimizer: Any, valset: Sequence[Any] | None, seed: int,
                  num_candidate_programs: int, max_bootstrapped_demos: int,
                  max_labeled_demos: int, display_progress: bool, opt_id: str, lm: Any,
                  adaptive_workers: bool, client: distributed.Client,
                  _monitor: Callable | None) -> OptimizationResult:
        import pandas as pd

        trainset = list(trainset)
        if not trainset:
            raise ValueError("optimize_program_distributed needs a non-empty trainset")
        valset = list(valset) if valset is not None else trainset
        carried = snapshot_settings()  # a setting that cannot travel fails here, first
        health = cast("ClusterHealth", HealthMonitor.get_cluster_health(client=client))
        n_candidates = 3 + num_candidate_programs
        total = len(trainset) + n_candidates * len(valset)
        plan = calculate_optimal_distribution(health, max_workers, min_workers_per_node,
                                              n_evaluations=total)
        if not plan.workers:
            raise RuntimeError(
                "No healthy worker to run the optimization on: "
                f"{[(n.node, n.status) for n in health.cluster.node_health]}. Add workers "
                "or wait for degraded ones to recover."
            )
        ctx = current_trace()
        coordinator = ProcessManager.start_singleton(
            OptimizationCoordinator, opt_id, plan.to_dict(), total,
            {"seed": seed, "candidates": n_candidates, "trainset": len(trainset),
             "valset": len(valset),
             "trace_id": ctx.trace_id if ctx else None},
            name=coordinator_name(opt_id), owner="cluster", client=client,
        )
        records = coordinator.get_records().result()
        resumed = bool(records["teacher_runs"] or records["evaluations"])
        if resumed:
            coordinator.resume().result()
            logger.info("Resuming optimization %s: %d teacher runs and %d evaluations done",
                        opt_id, len(records["teacher_runs"]), len(records["evaluations"]))
        spec = None
        if coordinator.get_spec().result() is None:
            spec = _spec_bytes(
                program=program, trainset=trainset, metric=metric, valset=valset, seed=seed,
                num_candidate_programs=num_candidate_programs,
                max_bootstrapped_demos=max_bootstrapped_demos,
                max_labeled_demos=max_labeled_demos, max_workers=max_workers,
                min_workers_per_node=min_workers_per_node, timeout=timeout, lm=lm,
                optimizer=optimizer, settings=carried,
            )
        if spec is not None:
            coordinator.set_spec(spec).result()
        services = _register_services(opt_id, coordinator, plan, client)
        Channels.broadcast("control", ("optimization_started", opt_id, plan.to_dict()),
                           client=client)

        stop = threading.Event()
        scale_log: list[dict[str, Any]] = []
        best = {"score": None}
        t0 = time.monotonic()

        def on_control(msg: Message) -> None:
            payload = msg.payload
            if not isinstance(payload, tuple) or len(payload) < 2 or payload[1] != opt_id:
                return
            if payload[0] == "stop_optimization":
                stop.set()
                coordinator.request_stop()
            elif payload[0] == "scale_optimization" and len(payload) >= 4:
                coordinator.request_scale(payload[2], int(payload[3]))
                scale_log.append(scale_cluster(client, payload[2], int(payload[3]),
                                               reason="control request"))

        control = cast("Subscription",
                       Channels.subscribe("control", handler=on_control, client=client))
        progress_log: list[dict[str, Any]] = []

        def on_progress(state: dict[str, Any]) -> None:
            running = state.get("running_score")
            if state.get("best_score") is not None:
                # the best mean so far of any candidate (final once all are evaluated)
                best["score"] = state["best_score"]
            planned = None
            if state.get("phase") == "random search" and "done" in state:
                # teacher runs made + the evaluations the search plans now (a race's
                # plan shrinks as it stops candidates)
                planned = runtime.evaluations - state["done"] + state["total"]
            snapshot = coordinator.report_progress({
                "evaluations": runtime.evaluations, "best_score": best["score"],
                "running_score": running, "phase": state.get("phase"), "total": planned,
                "stopped": state.get("stopped"), "round": state.get("round"),
            }).result()
            progress_log.append(snapshot)
            Channels.broadcast("telemetry", ("optimization_progress", opt_id, snapshot),
                               client=client)

        def should_stop() -> bool:
            return stop.is_set() or (timeout is not None and time.monotonic() - t0 > timeout)

        runtime = Runtime(
            client=client, workers=None if adaptive_workers else plan.workers,
            on_progress=on_progress, should_stop=should_stop,
            display_progress=display_progress, lm=lm,
            done_teacher=dict(records["teacher_runs"]),
            done_evals={k: EvaluationRecord(**{**r, "prediction": None})
                        for k, r in records["evaluations"].items()},
            on_teacher_runs=lambda runs: coordinator.record_teacher_runs(runs).result(),
            on_evaluations=lambda p, recs: coordinator.record_evaluations(
                p, [_record_dict(r) for r in recs]).result(),
        )
        if optimizer is None:
            optimizer = BootstrapFewShotWithRandomSearch(
                metric, num_candidate_programs=num_candidate_programs, seed=seed,
                max_bootstrapped_demos=max_bootstrapped_demos,
                max_labeled_demos=max_labeled_demos, runtime=runtime,
            )
        else:
            optimizer.runtime = runtime
        def worker_rates() -> dict[str, float]:
            """Evaluations per busy second of each worker, from the finished records."""
            busy: dict[str, list[float]] = {}
            for h in list(getattr(optimizer, "history", None) or []):
                busy.setdefault(h["worker"], []).append(h["duration"])
            return {w: len(d) / max(sum(d), 1e-9) for w, d in busy.items()}

        monitor = (_monitor(opt_id, coordinator, client, scale_log, worker_rates)
                   if _monitor else None)
        status, best_program, best_score = "completed", None, None
        stopped_reason: str | None = None
        try:
            best_program = optimizer.compile(program, trainset=trainset, valset=valset)
            best_score = getattr(best_program, "score", None)
            stopped_reason = getattr(optimizer, "stopped_reason", None)  # its LM budget ran out
            status = "stopped" if stopped_reason else status
        except OptimizationStopped:
            status, stopped_reason = "stopped", "asked to stop (a stop request or the timeout)"
            best_program, best_score = _best_so_far(optimizer, program)
        except BudgetExhaustedError as exc:  # an optimizer that does not stop on it itself
            status, stopped_reason = "stopped", str(exc)
            best_program, best_score = _best_so_far(optimizer, program)
        except Exception:
            coordinator.finish("failed").result()
            raise
        finally:
            if monitor is not None:
                monitor.stop()
            control.close()
            for name in services:
                ServiceMesh.deregister_service(name, client=client)
        wall = time.monotonic() - t0
        candidates = pd.DataFrame(getattr(best_program, "candidate_programs", None) or [])
        summary = {"best_score": best_score, "wall_time": wall,
                   "best_seed": _best_seed(candidates, best_score)}
        coordinator.finish(status, summary).result()
        Channels.broadcast("control", ("optimization_completed", opt_id, summary),
                           client=client)
        history = (optimizer.history_frame() if hasattr(optimizer, "history_frame")
                   else pd.DataFrame())
        ctx = current_trace()
        return OptimizationResult(
            optimization_id=opt_id, status=status, best_program=best_program,
            best_score=best_score, plan=plan, wall_time=wall, history=history,
            candidates=candidates, scaling_log=scale_log, progress=progress_log,
            trace_id=ctx.trace_id if ctx else None,
            resumed_from=len(records["teacher_runs"]) + len(records["evaluations"]),
            stopped_reason=stopped_reason,
        )

    @staticmethod
    def resume(optimization_id: str, *, client: distributed.Client | None = None,
               **overrides: Any) -> OptimizationResult:
        """Continue an interrupted optimization without redoing its finished evaluations.

        Works after the client's kernel restarted (the coordinator kept its state in the
        cluster) and, when ``foundation.processes.checkpoint-dir`` is configured on the
        scheduler, after the whole cluster restarted (the coordinator comes back from its
        checkpoint file). It runs under the DSPEx settings of the original call (kept
        by the coordinator), with those set where ``resume`` is called
        (``dspex.configure``, ``with dspex.context``) on top. ``overrides`` replace
        arguments of the original call (e.g. ``display_progress=False``); ``client`` is
        the Dask client to run on (by default the current one).

        Raises
        ------
        ProcessNotFoundError
            When no coordinator (live or checkpointed) knows ``optimization_id``.
        """
        client = client or current_client()
        name = coordinator_name(optimization_id)
        coordinator = ProcessManager.lookup(name, client=client)
        if not isinstance(coordinator, SingletonHandle):  # coordinators are singletons
            # a cluster restart: started again under its name, it restores its checkpoint
            coordinator = ProcessManager.start_singleton(
                OptimizationCoordinator, optimization_id, {}, 0, name=name, owner="cluster",
                client=client)
        spec = coordinator.get_spec().result()
        if spec is None:
            ProcessManager.stop(name, client=client)
            raise ProcessNotFoundError(
                f"No optimization {optimization_id!r} to resume: no coordinator holds it "
                "(set foundation.processes.checkpoint-dir to survive cluster restarts).",
                name=name,
            )
        kwargs = {**cloudpickle.loads(spec), **overrides}
        carried: SettingsSnapshot | None = kwargs.pop("settings", None)
        values = {**(carried.values if carried is not None else {}), **settings.explicit()}
        with context(**values):
            return DistributedOptimizer.optimize_program_distributed(
                optimization_id=optimization_id, client=client, **kwargs)


def _spec_bytes(**kwargs: Any) -> bytes | None:
    """The call's arguments, for resume(); ``None`` (not resumable) if they don't pickle."""
    try:
        return cloudpickle.dumps(kwargs)
    except Exception as exc:
        logger.warning("This optimization cannot be resumed: its arguments do not pickle (%s)",
                       exc)
        return None


def _record_dict(record: EvaluationRecord) -> dict[str, Any]:
    out = asdict(record)
    out["prediction"] = None
    return out


def _best_seed(candidates: pd.DataFrame, best_score: float | None) -> int | None:
    if candidates.empty or best_score is None:
        return None
    row = candidates[candidates["score"] == best_score]
    return int(row["seed"].iloc[0]) if len(row) else None


def _best_so_far(optimizer: Any, program: Any) -> tuple[Any, float | None]:
    """After a stop: the candidate with the best mean over the examples it finished."""
    history = getattr(optimizer, "history", None) or []
    cands = getattr(optimizer, "candidates", None) or []
    if not history or not cands:
        return program, None
    sums: dict[int, list[float]] = {}
    for h in history:
        sums.setdefault(h["candidate"], []).append(h["score"])
    p, scores = max(sums.items(), key=lambda kv: (sum(kv[1]) / len(kv[1]), -kv[0]))
    return cands[p].program, round(100.0 * sum(scores) / len(scores), 2)


def _register_services(opt_id: str, coordinator: Any, plan: CapacityPlan,
                       client: distributed.Client) -> list[Any]:
    names: list[Any] = [coordinator_name(opt_id)]
    ServiceMesh.register_service(
        names[0], coordinator, capabilities=["optimization_coordinator"],
        metadata={"optimization_id": opt_id}, replace=True, client=client,
    )
    for d in plan.worker_distribution:
        for i in range(d["workers"]):
            name = ("evaluation_worker", opt_id, d["node"], i)
            ServiceMesh.register_service(
                name, coordinator, capabilities=CAPABILITIES,
                metadata={"optimization_id": opt_id, "node": d["node"], "worker_id": i,
                          "status": "ready", "started_at": time.time()},
                replace=True, client=client,
            )
            names.append(name)
    return names
