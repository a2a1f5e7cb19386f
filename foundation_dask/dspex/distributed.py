"""Distributed and adaptive optimization (the Elixir DSPEx.DistributedOptimizer and
DSPEx.AdaptiveOptimizer) on Foundation primitives.

``DistributedOptimizer.optimize_program_distributed`` plans capacity from
:class:`~foundation_dask.HealthMonitor`, starts a supervised coordinator per
optimization, registers its evaluation workers in the :class:`~foundation_dask.ServiceMesh`
(capabilities ``dspy_evaluation`` and ``ai_optimization``), runs the optimizer with
its evaluations scattered over the planned workers, reports progress on the
``telemetry`` channel and honours ``stop`` / ``scale`` requests from ``control``.

``AdaptiveOptimizer.adaptive_optimization`` runs the same while a monitor compares the
evaluation rate with a target and scales the Dask cluster up (when capacity is
available) or down (retiring the least efficient workers), logging every decision.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import foundation_dask as fd
from foundation_dask.core._client import current_client, worker_infos
from foundation_dask.dspex.evaluate import EvaluationRecord
from foundation_dask.dspex.optimizers import (
    BootstrapFewShotWithRandomSearch,
    OptimizationStopped,
    Runtime,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

CAPABILITIES = ["dspy_evaluation", "ai_optimization"]


# --------------------------------------------------------------------------------------
# capacity planning


@dataclass
class CapacityPlan:
    """Where the evaluation workers of an optimization go.

    ``worker_distribution`` has one entry per healthy Dask worker: its available
    capacity (cores of its host minus the host's load average, shared between the
    host's workers and capped at the worker's threads) and the evaluation workers
    (concurrent evaluation slots) given to it.
    """

    total_capacity: float
    total_workers: int
    worker_distribution: list[dict[str, Any]]
    utilization_percent: float
    estimated_completion_time_s: float | None = None

    @property
    def workers(self) -> list[str]:
        """Addresses of the Dask workers that get at least one evaluation worker."""
        return [d["node"] for d in self.worker_distribution if d["workers"] > 0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calculate_optimal_distribution(health: Any, max_workers: int | str = "auto",
                                   min_workers_per_node: int = 1,
                                   n_evaluations: int | None = None,
                                   eval_rate: float = 2.0) -> CapacityPlan:
    """A capacity plan from a :class:`~foundation_dask.core.health.ClusterHealth`.

    Parameters
    ----------
    max_workers
        ``"auto"`` uses 80% of the available capacity; an integer caps it.
    min_workers_per_node
        Evaluation workers every healthy node gets regardless of its load. When no
        node is healthy, degraded (but reachable) nodes are used instead.
    n_evaluations, eval_rate
        For the completion estimate: evaluations to run, per worker per second.
    """
    if max_workers != "auto" and (not isinstance(max_workers, int) or max_workers < 1):
        raise ValueError(f"max_workers must be 'auto' or a positive integer, not {max_workers!r}")
    if min_workers_per_node < 0:
        raise ValueError(f"min_workers_per_node must be >= 0, not {min_workers_per_node}")
    nodes = [n for n in health.cluster.node_health if n.status == "healthy"]
    if not nodes:
        # a cluster busy with earlier work reads as degraded (CPU over the threshold):
        # still usable, at the minimum per node
        nodes = [n for n in health.cluster.node_health if n.status == "degraded"]
    by_host: dict[str, list[Any]] = {}
    for n in nodes:
        by_host.setdefault(getattr(n, "host", None) or n.node, []).append(n)
    distribution = []
    for members in by_host.values():
        threads = [int(m.nthreads or 1) for m in members]
        host_cores = float(members[0].cores or sum(threads))
        load = float(members[0].load_avg or 0.0)
        available = max(0.0, host_cores - load)
        total_threads = sum(threads) or 1
        for m, t in zip(members, threads, strict=True):
            capacity = min(float(t), available * t / total_threads)
            distribution.append({"node": m.node, "capacity": round(capacity, 3),
                                 "threads": t, "workers": 0})
    total_capacity = sum(d["capacity"] for d in distribution)
    if max_workers == "auto":
        optimal = round(total_capacity * 0.8)
    else:
        optimal = min(int(max_workers), max(1, round(total_capacity)))
    for d in distribution:
        d["workers"] = min(min_workers_per_node, d["threads"])
    remaining = optimal - sum(d["workers"] for d in distribution)
    if remaining > 0 and total_capacity > 0:
        # largest remainder: proportional to capacity, capped at each worker's threads
        shares = [(remaining * d["capacity"] / total_capacity, i)
                  for i, d in enumerate(distribution)]
        for share, i in shares:
            d = distribution[i]
            d["workers"] = min(d["threads"], d["workers"] + math.floor(share))
        left = optimal - sum(d["workers"] for d in distribution)
        for _, i in sorted(shares, key=lambda s: -(s[0] - math.floor(s[0]))):
            if left <= 0:
                break
            if distribution[i]["workers"] < distribution[i]["threads"]:
                distribution[i]["workers"] += 1
                left -= 1
    total = sum(d["workers"] for d in distribution)
    estimate = (n_evaluations / (max(1, total) * eval_rate)) if n_evaluations else None
    return CapacityPlan(
        total_capacity=round(total_capacity, 3), total_workers=total,
        worker_distribution=distribution,
        utilization_percent=round(100.0 * total / total_capacity, 1) if total_capacity else 0.0,
        estimated_completion_time_s=estimate,
    )


# --------------------------------------------------------------------------------------
# the coordinator


class OptimizationCoordinator:
    """Supervised singleton holding one optimization's plan, progress and history.

    Named ``("optimization_coordinator", optimization_id)``; its state is
    checkpointed after every call, so it survives the death of its worker.
    """

    def __init__(self, optimization_id: str, plan: dict[str, Any], total_evaluations: int,
                 config: dict[str, Any] | None = None):
        self.state: dict[str, Any] = {
            "optimization_id": optimization_id,
            "status": "running",
            "plan": plan,
            "config": config or {},
            "started_at": time.time(),
            "finished_at": None,
            "total_evaluations": total_evaluations,
            "evaluations_completed": 0,
            "current_best_score": None,
            "completion_percent": 0.0,
            "rate": 0.0,
            "estimated_completion_time": None,
            "history": [],
            "stop_requested": False,
            "scale_requests": [],
            "result": None,
            # what a resumed run needs: the finished work and how to start again
            "teacher_runs": {},
            "evaluations": {},
            "spec": None,
            "resumes": 0,
        }

    def record_teacher_runs(self, runs: list[dict[str, Any]]) -> int:
        for run in runs:
            self.state["teacher_runs"][run["index"]] = run
        return len(self.state["teacher_runs"])

    def record_evaluations(self, candidate: int, records: list[dict[str, Any]]) -> int:
        for r in records:
            self.state["evaluations"][(candidate, r["index"])] = r
        return len(self.state["evaluations"])

    def get_records(self) -> dict[str, Any]:
        return {"teacher_runs": dict(self.state["teacher_runs"]),
                "evaluations": dict(self.state["evaluations"])}

    def set_spec(self, spec: bytes) -> None:
        self.state["spec"] = spec

    def get_spec(self) -> bytes | None:
        return self.state["spec"]

    def resume(self) -> dict[str, Any]:
        self.state["resumes"] += 1
        self.state["status"] = "running"
        self.state["stop_requested"] = False
        return self.get_progress()

    def report_progress(self, progress: dict[str, Any]) -> dict[str, Any]:
        s = self.state
        s["evaluations_completed"] = progress.get("evaluations", s["evaluations_completed"])
        if progress.get("best_score") is not None:
            s["current_best_score"] = progress["best_score"]
        total = max(1, s["total_evaluations"])
        s["completion_percent"] = round(min(100.0, 100.0 * s["evaluations_completed"] / total), 1)
        elapsed = time.time() - s["started_at"]
        s["rate"] = s["evaluations_completed"] / elapsed if elapsed > 0 else 0.0
        left = max(0, total - s["evaluations_completed"])
        s["estimated_completion_time"] = (time.time() + left / s["rate"]) if s["rate"] else None
        s["history"].append({
            "time": time.time(), "evaluations": s["evaluations_completed"],
            "completion_percent": s["completion_percent"],
            "best_score": s["current_best_score"], "running_score": progress.get("running_score"),
            "rate": s["rate"], "phase": progress.get("phase"),
        })
        del s["history"][:-1000]
        return self.get_progress()

    def get_progress(self) -> dict[str, Any]:
        s = self.state
        return {k: s[k] for k in ("optimization_id", "status", "completion_percent",
                                  "current_best_score", "evaluations_completed",
                                  "total_evaluations", "rate", "estimated_completion_time")}

    def get_optimization_info(self) -> dict[str, Any]:
        skip = ("history", "teacher_runs", "evaluations", "spec")
        info = {k: v for k, v in self.state.items() if k not in skip}
        info["teacher_runs_done"] = len(self.state["teacher_runs"])
        info["evaluations_done"] = len(self.state["evaluations"])
        return info

    def get_history(self) -> list[dict[str, Any]]:
        return list(self.state["history"])

    def get_performance_metrics(self) -> dict[str, float]:
        hist = self.state["history"][-10:]
        if len(hist) >= 2 and hist[-1]["time"] > hist[0]["time"]:
            rate = (hist[-1]["evaluations"] - hist[0]["evaluations"]) / (
                hist[-1]["time"] - hist[0]["time"])
        else:
            rate = self.state["rate"]
        workers = max(1, self.state["plan"].get("total_workers", 1))
        return {"evaluations_per_second": rate, "efficiency": rate / workers}

    def request_stop(self) -> bool:
        self.state["stop_requested"] = True
        self.state["status"] = "stopping"
        return True

    def stop_requested(self) -> bool:
        return self.state["stop_requested"]

    def request_scale(self, direction: str, n: int) -> int:
        self.state["scale_requests"].append({"time": time.time(), "direction": direction,
                                             "n": n})
        return len(self.state["scale_requests"])

    def finish(self, status: str, result: dict[str, Any] | None = None) -> dict[str, Any]:
        self.state["status"] = status
        self.state["finished_at"] = time.time()
        self.state["result"] = result
        if result and result.get("best_score") is not None:
            self.state["current_best_score"] = result["best_score"]
        if status == "completed":
            self.state["completion_percent"] = 100.0
        return self.get_optimization_info()

    def checkpoint(self) -> dict[str, Any]:
        return self.state

    def restore(self, state: dict[str, Any]) -> None:
        self.state = state


# --------------------------------------------------------------------------------------
# results


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

    def __repr__(self) -> str:
        return (f"OptimizationResult({self.optimization_id}, status={self.status}, "
                f"best_score={self.best_score}, evaluations={len(self.history)}, "
                f"wall_time={self.wall_time:.1f}s)")

    def _repr_html_(self) -> str:
        return (
            f"<b>Optimization {self.optimization_id}</b>: {self.status}, best score "
            f"<b>{self.best_score}</b>, {len(self.history)} evaluations on "
            f"{self.plan.total_workers} evaluation workers in {self.wall_time:.1f} s"
            + self.candidates.to_html(index=False, max_rows=20)
        )


def _coordinator_name(optimization_id: str) -> tuple[str, str]:
    return ("optimization_coordinator", optimization_id)


class DistributedOptimizer:
    """Optimize a program across the cluster (see the module docstring)."""

    @staticmethod
    def optimize_program_distributed(
        program: Any, trainset: Sequence[Any], metric: Callable, *,
        max_workers: int | str = "auto", min_workers_per_node: int = 1,
        timeout: float | None = 300.0, optimizer: Any = None,
        valset: Sequence[Any] | None = None, seed: int = 0, num_candidate_programs: int = 8,
        max_bootstrapped_demos: int = 4, max_labeled_demos: int = 16,
        display_progress: bool = True, optimization_id: str | None = None, lm: Any = None,
        adaptive_workers: bool = False, trace: bool = False,
        _monitor: Callable | None = None,
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
            Run the programs under ``dspex.context(lm=lm)`` on the workers.
        trace
            Trace the whole optimization with ElixirScope (``result.trace_id``): the
            coordinator, every evaluation chunk and example, every LM call (latency,
            tokens, cache hit), lost tasks and their re-runs. Inside an open
            ``scope.trace`` block the optimization joins that trace anyway.

        Returns
        -------
        OptimizationResult
        """
        from foundation_dask import scope

        opt_id = optimization_id or uuid.uuid4().hex[:10]
        if trace and scope.current() is None:
            with scope.trace(f"optimization {opt_id}", optimization_id=opt_id) as t:
                result = DistributedOptimizer.optimize_program_distributed(
                    program, trainset, metric, max_workers=max_workers,
                    min_workers_per_node=min_workers_per_node, timeout=timeout,
                    optimizer=optimizer, valset=valset, seed=seed,
                    num_candidate_programs=num_candidate_programs,
                    max_bootstrapped_demos=max_bootstrapped_demos,
                    max_labeled_demos=max_labeled_demos, display_progress=display_progress,
                    optimization_id=opt_id, lm=lm, adaptive_workers=adaptive_workers,
                    _monitor=_monitor,
                )
            result.trace_id = t.trace_id
            return result
        return DistributedOptimizer._optimize(
            program, trainset, metric, max_workers=max_workers,
            min_workers_per_node=min_workers_per_node, timeout=timeout, optimizer=optimizer,
            valset=valset, seed=seed, num_candidate_programs=num_candidate_programs,
            max_bootstrapped_demos=max_bootstrapped_demos, max_labeled_demos=max_labeled_demos,
            display_progress=display_progress, opt_id=opt_id, lm=lm,
            adaptive_workers=adaptive_workers, _monitor=_monitor,
        )

    @staticmethod
    def _optimize(program: Any, trainset: Sequence[Any], metric: Callable, *,
                  max_workers: int | str, min_workers_per_node: int, timeout: float | None,
                  optimizer: Any, valset: Sequence[Any] | None, seed: int,
                  num_candidate_programs: int, max_bootstrapped_demos: int,
                  max_labeled_demos: int, display_progress: bool, opt_id: str, lm: Any,
                  adaptive_workers: bool, _monitor: Callable | None) -> OptimizationResult:
        import pandas as pd

        from foundation_dask import scope

        trainset = list(trainset)
        if not trainset:
            raise ValueError("optimize_program_distributed needs a non-empty trainset")
        client = current_client()
        valset = list(valset) if valset is not None else trainset
        health = fd.HealthMonitor.get_cluster_health()
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
        coordinator = fd.ProcessManager.start_singleton(
            OptimizationCoordinator, opt_id, plan.to_dict(), total,
            {"seed": seed, "candidates": n_candidates, "trainset": len(trainset),
             "valset": len(valset),
             "trace_id": scope.current().trace_id if scope.current() else None},
            name=_coordinator_name(opt_id),
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
                optimizer=optimizer,
            )
        if spec is not None:
            coordinator.set_spec(spec).result()
        services = _register_services(opt_id, coordinator, plan)
        fd.Channels.broadcast("control", ("optimization_started", opt_id, plan.to_dict()))

        stop = threading.Event()
        scale_log: list[dict[str, Any]] = []
        best = {"score": None}
        t0 = time.monotonic()

        def on_control(msg) -> None:
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

        control = fd.Channels.subscribe("control", handler=on_control)
        progress_log: list[dict[str, Any]] = []

        def on_progress(state: dict[str, Any]) -> None:
            running = state.get("running_score")
            if state.get("best_score") is not None:
                # the best mean so far of any candidate (final once all are evaluated)
                best["score"] = state["best_score"]
            snapshot = coordinator.report_progress({
                "evaluations": runtime.evaluations, "best_score": best["score"],
                "running_score": running, "phase": state.get("phase"),
            }).result()
            progress_log.append(snapshot)
            fd.Channels.broadcast("telemetry", ("optimization_progress", opt_id, snapshot))

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
        try:
            best_program = optimizer.compile(program, trainset=trainset, valset=valset)
            best_score = getattr(best_program, "score", None)
        except OptimizationStopped:
            status = "stopped"
            best_program, best_score = _best_so_far(optimizer, program)
        except Exception:
            coordinator.finish("failed").result()
            raise
        finally:
            if monitor is not None:
                monitor.stop()
            control.close()
            for name in services:
                fd.ServiceMesh.deregister_service(name)
        wall = time.monotonic() - t0
        candidates = pd.DataFrame(getattr(best_program, "candidate_programs", None) or [])
        summary = {"best_score": best_score, "wall_time": wall,
                   "best_seed": _best_seed(candidates, best_score)}
        coordinator.finish(status, summary).result()
        fd.Channels.broadcast("control", ("optimization_completed", opt_id, summary))
        history = (optimizer.history_frame() if hasattr(optimizer, "history_frame")
                   else pd.DataFrame())
        ctx = scope.current()
        return OptimizationResult(
            optimization_id=opt_id, status=status, best_program=best_program,
            best_score=best_score, plan=plan, wall_time=wall, history=history,
            candidates=candidates, scaling_log=scale_log, progress=progress_log,
            trace_id=ctx.trace_id if ctx else None,
            resumed_from=len(records["teacher_runs"]) + len(records["evaluations"]),
        )

    @staticmethod
    def resume(optimization_id: str, **overrides: Any) -> OptimizationResult:
        """Continue an interrupted optimization without redoing its finished evaluations.

        Works after the client's kernel restarted (the coordinator kept its state in the
        cluster) and, when ``foundation.processes.checkpoint-dir`` is configured on the
        scheduler, after the whole cluster restarted (the coordinator comes back from its
        checkpoint file). ``overrides`` replace arguments of the original call (e.g.
        ``display_progress=False``).

        Raises
        ------
        ProcessNotFoundError
            When no coordinator (live or checkpointed) knows ``optimization_id``.
        """
        import cloudpickle

        from foundation_dask.core.processes import ProcessNotFoundError

        name = _coordinator_name(optimization_id)
        coordinator = fd.ProcessManager.lookup(name)
        if coordinator is None:
            # a cluster restart: started again under its name, it restores its checkpoint
            coordinator = fd.ProcessManager.start_singleton(
                OptimizationCoordinator, optimization_id, {}, 0, name=name)
        spec = coordinator.get_spec().result()
        if spec is None:
            fd.ProcessManager.stop(name)
            raise ProcessNotFoundError(
                f"No optimization {optimization_id!r} to resume: no coordinator holds it "
                "(set foundation.processes.checkpoint-dir to survive cluster restarts)."
            )
        kwargs = {**cloudpickle.loads(spec), **overrides}
        return DistributedOptimizer.optimize_program_distributed(
            optimization_id=optimization_id, **kwargs)


def _spec_bytes(**kwargs: Any) -> bytes | None:
    """The call's arguments, for resume(); ``None`` (not resumable) if they don't pickle."""
    import cloudpickle

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


def _register_services(opt_id: str, coordinator: Any, plan: CapacityPlan) -> list[Any]:
    names = [_coordinator_name(opt_id)]
    fd.ServiceMesh.register_service(
        names[0], coordinator, capabilities=["optimization_coordinator"],
        metadata={"optimization_id": opt_id}, replace=True,
    )
    for d in plan.worker_distribution:
        for i in range(d["workers"]):
            name = ("evaluation_worker", opt_id, d["node"], i)
            fd.ServiceMesh.register_service(
                name, coordinator, capabilities=CAPABILITIES,
                metadata={"optimization_id": opt_id, "node": d["node"], "worker_id": i,
                          "status": "ready", "started_at": time.time()},
                replace=True,
            )
            names.append(name)
    return names


# --------------------------------------------------------------------------------------
# scaling


def _cluster_of(client: Any) -> Any:
    from foundation_dask.cluster import get_cluster

    return get_cluster() or getattr(client, "cluster", None)


def scale_cluster(client: Any, direction: str, n: int, *, reason: str,
                  retire: Sequence[str] | None = None, numbers: dict | None = None
                  ) -> dict[str, Any]:
    """Scale the cluster up or down by ``n`` workers; returns the logged decision."""
    before = len(worker_infos(client))
    entry = {"time": time.time(), "action": f"scale_{direction}", "n": n, "reason": reason,
             "workers_before": before, **(numbers or {})}
    cluster = _cluster_of(client)
    if direction == "up":
        if cluster is None:
            entry["outcome"] = "no cluster manager: cannot add workers"
        else:
            cluster.scale(before + n)
            entry["outcome"] = f"requested {before + n} workers"
    elif direction == "down":
        workers = list(retire or [])
        if not workers:
            entry["outcome"] = "nothing to retire"
        else:
            client.retire_workers(workers=workers, close_workers=True)
            if cluster is not None and hasattr(cluster, "worker_spec"):
                names = {w["name"]: a for a, w in
                         worker_infos(client).items()}
                keep = set(names)
                for name in list(cluster.worker_spec):
                    if str(name) not in {str(k) for k in keep}:
                        cluster.worker_spec.pop(name, None)
            entry["retired"] = workers
            entry["outcome"] = f"retired {workers}"
    else:
        entry["outcome"] = f"unknown direction {direction!r}"
    logger.info("Scaling decision: %s", entry)
    return entry


class _AdaptiveMonitor:
    def __init__(self, opt_id: str, coordinator: Any, client: Any, log: list,
                 worker_rates: Callable[[], dict[str, float]], target: float, interval: float,
                 min_workers: int, max_workers: int | None, step: int,
                 capacity: Callable[[Any], float] | None = None):
        self.opt_id, self.coordinator, self.client = opt_id, coordinator, client
        self.worker_rates = worker_rates
        self.capacity = capacity or (lambda health: health.available_capacity())
        self.log, self.target, self.interval = log, target, interval
        self.min_workers, self.max_workers, self.step = min_workers, max_workers, step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adaptive-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the monitor must not kill the optimization
                logger.exception("adaptive scaling check failed")

    def check(self) -> dict[str, Any] | None:
        metrics = self.coordinator.get_performance_metrics().result()
        rate = metrics["evaluations_per_second"]
        health = fd.HealthMonitor.get_cluster_health()
        capacity = float(self.capacity(health))
        workers = [n.node for n in health.cluster.node_health if n.status == "healthy"]
        numbers = {"rate": round(rate, 3), "target": self.target,
                   "worker_rates": {w: round(r, 2) for w, r in self.worker_rates().items()},
                   "available_capacity": round(capacity, 2), "workers": len(workers)}
        if rate < self.target and capacity > 0 and (
                self.max_workers is None or len(workers) < self.max_workers):
            entry = scale_cluster(self.client, "up", self.step, reason="below target rate",
                                  numbers=numbers)
        elif rate > 1.5 * self.target and len(workers) > self.min_workers:
            worst = self._least_efficient(workers)
            entry = scale_cluster(self.client, "down", 1, reason="well above target rate",
                                  retire=worst, numbers=numbers)
        else:
            entry = {"time": time.time(), "action": "no_scaling", "reason": "within band",
                     **numbers}
        self.log.append(entry)
        fd.Channels.broadcast("events", ("scaling_decision", self.opt_id, entry))
        return entry

    def _least_efficient(self, workers: list[str]) -> list[str]:
        """The worker with the fewest evaluations per second of busy time."""
        rates = self.worker_rates()
        return [min(workers, key=lambda w: (rates.get(w, 0.0), w))]


class AdaptiveOptimizer:
    """Distributed optimization that scales the cluster to a target evaluation rate."""

    @staticmethod
    def adaptive_optimization(program: Any, trainset: Sequence[Any], metric: Callable, *,
                              target_eval_rate: float = 10.0,
                              scaling_check_interval: float = 30.0, min_workers: int = 1,
                              max_cluster_workers: int | None = None, scale_step: int = 1,
                              available_capacity: Callable[[Any], float] | None = None,
                              **opts: Any) -> OptimizationResult:
        """Like :meth:`DistributedOptimizer.optimize_program_distributed`, plus scaling.

        Every ``scaling_check_interval`` seconds: below ``target_eval_rate`` with
        capacity available, add ``scale_step`` workers; above 1.5x the target, retire
        the least busy worker gracefully. Every decision (with its numbers) is in
        ``result.scaling_log`` and on the ``events`` channel.

        ``available_capacity(health) -> cores`` says how much room there is to grow; by
        default the hosts' cores minus their load average
        (:meth:`~foundation_dask.core.health.ClusterHealth.available_capacity`).
        """
        if target_eval_rate <= 0:
            raise ValueError(f"target_eval_rate must be > 0, not {target_eval_rate}")
        if scaling_check_interval <= 0:
            raise ValueError(f"scaling_check_interval must be > 0, not {scaling_check_interval}")

        def monitor(opt_id, coordinator, client, log, worker_rates):
            return _AdaptiveMonitor(opt_id, coordinator, client, log, worker_rates,
                                    target_eval_rate, scaling_check_interval, min_workers,
                                    max_cluster_workers, scale_step, available_capacity)

        return DistributedOptimizer.optimize_program_distributed(
            program, trainset, metric, adaptive_workers=True, _monitor=monitor, **opts
        )


# --------------------------------------------------------------------------------------
# listing


OPTIMIZATION_COLUMNS = [
    "optimization_id", "status", "completion_percent", "current_best_score",
    "evaluations_completed", "total_evaluations", "rate", "estimated_completion_time",
    "workers", "started_at", "finished_at",
]


def _summary_row(state: dict[str, Any]) -> dict[str, Any]:
    row = {k: state.get(k) for k in OPTIMIZATION_COLUMNS}
    row["workers"] = (state.get("plan") or {}).get("total_workers")
    return row


def list_optimizations(include_finished: bool = True) -> pd.DataFrame:
    """The cluster's optimizations (one row per coordinator), newest first."""
    import pandas as pd

    rows = []
    for _, handle in fd.ProcessManager.find("optimization_coordinator"):
        try:
            info = handle.get_optimization_info().result(timeout=10)
        except Exception:  # being restarted or stopped meanwhile
            continue
        if include_finished or info["status"] in ("running", "stopping"):
            rows.append(_summary_row(info))
    out = pd.DataFrame(rows, columns=OPTIMIZATION_COLUMNS)
    return out.sort_values("started_at", ascending=False).reset_index(drop=True)


def optimization_history(optimization_id: str) -> pd.DataFrame:
    """Progress snapshots of one optimization (evaluations, scores, rate over time)."""
    import pandas as pd

    handle = fd.ProcessManager.lookup(_coordinator_name(optimization_id))
    if handle is None:
        raise KeyError(f"No optimization {optimization_id!r}; see dspex.list_optimizations()")
    return pd.DataFrame(handle.get_history().result(timeout=10))


def scheduler_optimizations(scheduler: Any) -> list[dict[str, Any]]:
    """Coordinator states read from their checkpoints on the scheduler (no client).

    The dashboard pages use this: the scheduler holds every coordinator's last
    checkpoint, which is plain data of this module's own class.
    """
    from distributed.protocol import pickle as dask_pickle

    sup = scheduler.extensions["foundation"].extensions["processes"]
    out = []
    for rec in list(sup.records.values()):
        if not rec.class_name.endswith(".OptimizationCoordinator") or rec.checkpoint is None:
            continue
        try:
            state, _ = dask_pickle.loads(rec.checkpoint)
        except Exception:
            continue
        out.append({**_summary_row(state), "history": state.get("history", []),
                    "evaluations": state.get("evaluations", {})})
    return out
