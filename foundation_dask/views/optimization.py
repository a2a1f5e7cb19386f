"""Client and scheduler: views of DSPEx optimizations, the list, the progress of one,
per-worker statistics, and the evaluations running on the cluster.

Client side they read the coordinators through :func:`dspex.list_optimizations` and
:func:`dspex.optimization_history`; on the scheduler (the dashboard's overview page)
they are given the coordinators' checkpointed states, which
:func:`~foundation_dask.dspex.orchestration.scheduler_optimizations` reads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, cast

import numpy as np
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, DataRange1d, HoverTool
from bokeh.models.widgets import Div
from bokeh.plotting import figure

from foundation_dask.dspex.orchestration import list_optimizations, optimization_history
from foundation_dask.views.base import (
    View,
    empty_columns,
    empty_note,
    fit_height,
    float_column,
    make_table,
    records_to_columns,
    set_data,
    show_note,
    status_colours,
    text_column,
    title_of,
)

LIST_COLUMNS = ["optimization_id", "status", "status_colour", "completion_percent",
                "current_best_score", "evaluations_completed", "total_evaluations", "rate",
                "eta_s", "workers"]

HISTORY_COLUMNS = ["evaluations", "best_score", "running_score", "rate", "completion_percent"]

WORKER_COLUMNS = ["worker", "evaluations", "mean_ms", "errors", "rate"]

EVALUATION_COLUMNS = ["eval_id", "label", "done", "total", "percent", "running_score",
                      "rate", "eta_s"]


def _eta(row: dict[str, Any]) -> float:
    eta = row.get("estimated_completion_time")
    return max(0.0, float(eta) - time.time()) if eta else float("nan")


#: The progress plot's note while no optimization is shown.
_NO_OPTIMIZATION = ("no optimization yet: its best and running scores appear here once "
                    "dspex.DistributedOptimizer.optimize_program_distributed(...) runs")

#: History fields under the names of the coordinator's progress (``get_progress``).
_PROGRESS_NAMES = {"evaluations": "evaluations_completed", "best_score": "current_best_score"}


def _history_row(row: dict[str, Any]) -> dict[str, Any]:
    """A history row (``optimization_history``) from a history row or a progress
    snapshot (``OptimizationResult.progress``: ``evaluations_completed``...)."""
    if all(k in row for k in _PROGRESS_NAMES):
        return row
    out = dict(row)
    for name, other in _PROGRESS_NAMES.items():
        if name not in out and other in out:
            out[name] = out[other]
    return out


class OptimizationsView(View):
    """Table of the cluster's optimizations: status, progress, best score, rate, ETA."""

    title = "Optimizations"

    source: ColumnDataSource

    def __init__(self, *, height: int = 200, **kwargs: Any):
        super().__init__(**kwargs)
        self.height = height
        self.source = ColumnDataSource(empty_columns(LIST_COLUMNS),
                                       name="foundation-optimizations")
        self.root = make_table(self.source, [
            ("optimization_id", "Optimization"), ("status", "Status", "status"),
            ("completion_percent", "Done %", "percent"),
            ("current_best_score", "Best score", "float"),
            ("evaluations_completed", "Evaluations", "int"),
            ("total_evaluations", "Of", "int"), ("rate", "Evals/s", "float"),
            ("eta_s", "ETA (s)", "float"), ("workers", "Workers", "int"),
        ], height=height, sizing_mode=self.sizing_mode)

    def default_fetch(self) -> Any:
        return list_optimizations()

    def apply(self, data: Any) -> None:
        rows = data.to_dict("records") if hasattr(data, "to_dict") else list(data)
        cols: dict[str, Any] = records_to_columns(rows, [c for c in LIST_COLUMNS
                                         if c not in ("status_colour", "eta_s")])
        cols["status"] = text_column(cols["status"])
        cols["status_colour"] = status_colours(cols["status"])
        for c in ("completion_percent", "current_best_score", "rate", "evaluations_completed",
                  "total_evaluations", "workers"):
            cols[c] = float_column(cols[c])
        cols["eta_s"] = float_column(_eta(r) for r in rows)
        cols["optimization_id"] = text_column(cols["optimization_id"])
        set_data(self.source, cols)
        fit_height(self.root, len(rows), self.height)

    @property
    def ids(self) -> list[str]:
        return list(self.source.data["optimization_id"])


class OptimizationProgressView(View):
    """Score over evaluations (running and best so far), with rate and ETA."""

    title = "Optimization progress"

    source: ColumnDataSource

    def __init__(self, optimization_id: str | None = None, *, height: int = 260,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.optimization_id = optimization_id
        self.source = ColumnDataSource(empty_columns(HISTORY_COLUMNS),
                                       name="foundation-optimization-progress")
        fig = figure(height=height, sizing_mode=self.sizing_mode, x_axis_label="evaluations",
                     y_axis_label="score (%)", tools="pan,wheel_zoom,box_zoom,reset,save",
                     title="score over evaluations")
        fig.line("evaluations", "best_score", source=self.source, line_width=2,
                 color="#2e7d32", legend_label="best candidate")
        fig.scatter("evaluations", "running_score", source=self.source, size=4,
                    color="#1565c0", legend_label="running score")
        fig.add_tools(HoverTool(tooltips=[("evaluations", "@evaluations"),
                                          ("best", "@best_score{0.0}"),
                                          ("running", "@running_score{0.0}"),
                                          ("rate", "@rate{0.0}/s"),
                                          ("done", "@completion_percent{0.0}%")]))
        fig.legend.location = "bottom_right"
        # ten points at least: a constant score made ticks of 33.3315, 33.332...
        cast(DataRange1d, fig.y_range).min_interval = 10
        self.figure = fig
        self.note = empty_note(fig, _NO_OPTIMIZATION)
        self.status = Div(text="no optimization selected", sizing_mode="stretch_width")
        self.root = column(self.status, fig, sizing_mode=self.sizing_mode)

    def select(self, optimization_id: str | None) -> None:
        """Show another optimization (call :meth:`update` afterwards)."""
        self.optimization_id = optimization_id

    def default_fetch(self) -> Any:
        if not self.optimization_id:
            return []
        return optimization_history(self.optimization_id)

    def apply(self, data: Any) -> None:
        rows = data.to_dict("records") if hasattr(data, "to_dict") else list(data)
        rows = [_history_row(r) for r in rows]
        cols: dict[str, Any] = records_to_columns(rows, HISTORY_COLUMNS)
        for c in HISTORY_COLUMNS:
            cols[c] = float_column(cols[c])
        set_data(self.source, cols)
        title = title_of(self.figure)
        if rows:
            last = rows[-1]
            # the coordinator's best is the best candidate's mean over its evaluations so
            # far: the last one is the run's (its result's best score), not the highest
            scores = cols["best_score"][~np.isnan(cols["best_score"])]
            best = f"{scores[-1]:.1f}%" if len(scores) else "-"
            stopped = last.get("candidates_stopped") or 0
            raced = (f", {stopped} candidate{'s' if stopped != 1 else ''} stopped by the race"
                     if stopped else "")
            self.status.text = (
                f"<b>{self.optimization_id}</b>: {last.get('completion_percent') or 0:.1f}% "
                f"done, best {best}, {last.get('rate') or 0:.1f} evaluations/s{raced}"
            )
            title.text = "score over evaluations"
            show_note(self.note, not np.isfinite(cols["best_score"]).any()
                      and not np.isfinite(cols["running_score"]).any(),
                      "no scores in these evaluations yet: they come with the next report")
        else:
            self.status.text = f"<b>{self.optimization_id or 'no optimization selected'}</b>"
            title.text = "score over evaluations"
            show_note(self.note, True, "waiting for the first evaluations of "
                      f"{self.optimization_id}" if self.optimization_id else _NO_OPTIMIZATION)


class WorkerStatsView(View):
    """Per-worker evaluation statistics of an optimization: count, mean time, errors."""

    title = "Evaluation workers"

    source: ColumnDataSource

    def __init__(self, *, height: int = 200, **kwargs: Any):
        super().__init__(**kwargs)
        self.height = height
        self.source = ColumnDataSource(empty_columns(WORKER_COLUMNS))
        self.root = make_table(self.source, [
            ("worker", "Worker"), ("evaluations", "Evaluations", "int"),
            ("mean_ms", "Mean ms", "float"), ("errors", "Errors", "int"),
            ("rate", "Evals per busy s", "float"),
        ], height=height, sizing_mode=self.sizing_mode)

    def apply(self, data: Any) -> None:
        """``data``: evaluation records (dicts or a DataFrame with worker, duration, error)."""
        rows = data.to_dict("records") if hasattr(data, "to_dict") else list(data)
        stats: dict[str, list[float]] = {}
        errors: dict[str, int] = {}
        for r in rows:
            w = str(r.get("worker"))
            stats.setdefault(w, []).append(float(r.get("duration") or 0.0))
            errors[w] = errors.get(w, 0) + int(bool(r.get("error")))
        workers = sorted(stats)
        fit_height(self.root, len(workers), self.height)
        set_data(self.source, {
            "worker": workers,
            "evaluations": float_column(len(stats[w]) for w in workers),
            "mean_ms": float_column(1000 * sum(stats[w]) / len(stats[w]) for w in workers),
            "errors": float_column(errors[w] for w in workers),
            "rate": float_column(len(stats[w]) / max(sum(stats[w]), 1e-9) for w in workers),
        })


class EvaluationsView(View):
    """The evaluations running on the cluster, as they go: ``dspex.Evaluate``, the
    candidates of the dspex optimizers, and DSPy's own evaluations inside
    ``dspex.on_cluster()``, from the ``evaluation_progress`` messages they publish on
    ``telemetry`` (:meth:`note` takes them; the newest ``keep`` are shown)."""

    title = "Evaluations"

    source: ColumnDataSource

    def __init__(self, *, height: int = 200, keep: int = 20, **kwargs: Any):
        super().__init__(**kwargs)
        self.height, self.keep = height, keep
        self._latest: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._guard = threading.Lock()
        self.source = ColumnDataSource(empty_columns(EVALUATION_COLUMNS))
        self.root = make_table(self.source, [
            ("label", "Evaluation"), ("eval_id", "Id"), ("done", "Done", "int"),
            ("total", "Of", "int"), ("percent", "Done %", "float"),
            ("running_score", "Score %", "float"), ("rate", "Examples/s", "float"),
            ("eta_s", "ETA (s)", "float"),
        ], height=height, sizing_mode=self.sizing_mode)

    def note(self, message: dict[str, Any]) -> bool:
        """Take one ``evaluation_progress`` message (any other is ignored); thread-safe."""
        if not isinstance(message, dict) or message.get("type") != "evaluation_progress":
            return False
        key = str(message.get("eval_id"))
        with self._guard:
            self._latest.pop(key, None)
            self._latest[key] = dict(message)
            while len(self._latest) > self.keep:
                self._latest.popitem(last=False)
        return True

    def default_fetch(self) -> Any:
        with self._guard:
            return list(reversed(self._latest.values()))

    def apply(self, data: Any) -> None:
        """``data``: the latest progress message of each evaluation, newest first."""
        rows = list(data)
        fit_height(self.root, len(rows), self.height)
        set_data(self.source, {
            "eval_id": [str(r.get("eval_id")) for r in rows],
            "label": [str(r.get("label") or "") for r in rows],
            "done": float_column(r.get("done") or 0 for r in rows),
            "total": float_column(r.get("total") or 0 for r in rows),
            "percent": float_column(100.0 * (r.get("done") or 0) / max(1, r.get("total") or 0)
                                    for r in rows),
            "running_score": float_column(r.get("running_score") or 0.0 for r in rows),
            "rate": float_column(r.get("rate") or 0.0 for r in rows),
            "eta_s": float_column(r.get("eta_s") or 0.0 for r in rows),
        })
