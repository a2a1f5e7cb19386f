"""Worker: the supervised coordinator of one optimization.

:class:`OptimizationCoordinator` runs as a supervised singleton on a Dask worker, named
``("optimization_coordinator", optimization_id)``. It holds the optimization's plan,
progress, history and the finished work a resumed run needs; the supervisor checkpoints
its state after every call, so it survives the death of its worker (and, with
``foundation.processes.checkpoint-dir``, a restart of the cluster). Its methods are
called from the client through its handle.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["OptimizationCoordinator"]


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
            # candidates a race stopped: (candidate, round) in the order they stopped
            "stopped_candidates": [],
            "result": None,
            # what a resumed run needs: the finished work and how to start again
            "teacher_runs": {},
            "evaluations": {},
            "spec": None,
            "resumes": 0,
        }

    def record_teacher_runs(self, runs: list[dict[str, Any]]) -> int:
        """Keep finished teacher runs (by trainset index); returns how many are kept."""
        for run in runs:
            self.state["teacher_runs"][run["index"]] = run
        return len(self.state["teacher_runs"])

    def record_evaluations(self, candidate: int, records: list[dict[str, Any]]) -> int:
        """Keep finished evaluations of ``candidate``; returns how many are kept."""
        for r in records:
            self.state["evaluations"][(candidate, r["index"])] = r
        return len(self.state["evaluations"])

    def get_records(self) -> dict[str, Any]:
        """The finished teacher runs and evaluations (what a resumed run skips)."""
        return {"teacher_runs": dict(self.state["teacher_runs"]),
                "evaluations": dict(self.state["evaluations"])}

    def set_spec(self, spec: bytes) -> None:
        """Keep the pickled arguments of the optimization (for a resume)."""
        self.state["spec"] = spec

    def get_spec(self) -> bytes | None:
        """The pickled arguments of the optimization, or ``None``."""
        return self.state["spec"]

    def resume(self) -> dict[str, Any]:
        """Mark the optimization running again; returns its progress."""
        self.state["resumes"] += 1
        self.state["status"] = "running"
        self.state["stop_requested"] = False
        return self.get_progress()

    def report_progress(self, progress: dict[str, Any]) -> dict[str, Any]:
        """Record a progress snapshot (evaluations, best score, phase, and the evaluations
        now planned in all: a race's total shrinks as it stops candidates); returns the
        progress."""
        s = self.state
        s["evaluations_completed"] = progress.get("evaluations", s["evaluations_completed"])
        if progress.get("total") is not None:
            s["total_evaluations"] = progress["total"]
        stopped = s.setdefault("stopped_candidates", [])
        known = {c for c, _ in stopped}
        for c in progress.get("stopped") or ():
            if c not in known:  # a resumed race stops the same candidates again
                stopped.append((c, progress.get("round")))
                known.add(c)
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
            "candidates_stopped": len(stopped),
        })
        del s["history"][:-1000]
        return self.get_progress()

    def get_progress(self) -> dict[str, Any]:
        """Status, completion, best score, rate and estimated completion time."""
        s = self.state
        return {**{k: s[k] for k in ("optimization_id", "status", "completion_percent",
                                     "current_best_score", "evaluations_completed",
                                     "total_evaluations", "rate",
                                     "estimated_completion_time")},
                "candidates_stopped": len(s.get("stopped_candidates", ()))}

    def get_optimization_info(self) -> dict[str, Any]:
        """The state without the history and the finished work (their counts instead)."""
        skip = ("history", "teacher_runs", "evaluations", "spec")
        info = {k: v for k, v in self.state.items() if k not in skip}
        info["teacher_runs_done"] = len(self.state["teacher_runs"])
        info["evaluations_done"] = len(self.state["evaluations"])
        return info

    def get_history(self) -> list[dict[str, Any]]:
        """Every progress snapshot (the last 1000)."""
        return list(self.state["history"])

    def get_performance_metrics(self) -> dict[str, float]:
        """Evaluations per second over the last snapshots, and per evaluation worker."""
        hist = self.state["history"][-10:]
        if len(hist) >= 2 and hist[-1]["time"] > hist[0]["time"]:
            rate = (hist[-1]["evaluations"] - hist[0]["evaluations"]) / (
                hist[-1]["time"] - hist[0]["time"])
        else:
            rate = self.state["rate"]
        workers = max(1, self.state["plan"].get("total_workers", 1))
        return {"evaluations_per_second": rate, "efficiency": rate / workers}

    def request_stop(self) -> bool:
        """Ask the optimization to stop with the best program so far."""
        self.state["stop_requested"] = True
        self.state["status"] = "stopping"
        return True

    def stop_requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.state["stop_requested"]

    def request_scale(self, direction: str, n: int) -> int:
        """Record a request to scale the cluster; returns how many were made."""
        self.state["scale_requests"].append({"time": time.time(), "direction": direction,
                                             "n": n})
        return len(self.state["scale_requests"])

    def finish(self, status: str, result: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record the end of the optimization (``completed``, ``stopped`` or ``failed``)."""
        self.state["status"] = status
        self.state["finished_at"] = time.time()
        self.state["result"] = result
        if result and result.get("best_score") is not None:
            self.state["current_best_score"] = result["best_score"]
        if status == "completed":
            self.state["completion_percent"] = 100.0
        return self.get_optimization_info()

    def checkpoint(self) -> dict[str, Any]:
        """The state the supervisor checkpoints."""
        return self.state

    def restore(self, state: dict[str, Any]) -> None:
        """Take the state back from a checkpoint."""
        self.state = state
