"""Any process: :class:`PerformanceReport`, the result of a cluster profiling analysis.

Built by :func:`~foundation_dask.scope.profiling.build_report` (in the process that
analyses, normally the client); plain data with a text and an HTML repr for notebooks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dask.utils import format_bytes

from foundation_dask._html import Safe, escape, html_repr

if TYPE_CHECKING:
    import pandas as pd


def _fmt(value: Any, kind: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{value:.1f}%"
    if kind == "bytes":
        return format_bytes(int(value))
    if kind == "s":
        return f"{value:.3f}s"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


@dataclass
class PerformanceReport:
    """Result of :func:`~foundation_dask.scope.analyze_cluster_performance`.

    Attributes
    ----------
    cluster_overview
        ``nodes``, ``profiled_nodes``, ``healthy_nodes``, ``failed_nodes``,
        ``total_cores`` (logical CPUs of the hosts), ``total_threads``, ``cpu_percent``
        (mean over nodes) and ``cpu_percent_max``, ``memory_bytes``, ``memory_limit``,
        ``memory_percent``, ``messages`` and ``message_throughput_per_sec`` (channel
        messages counted by the scheduler from the session's start to the analysis,
        ``message_window_s`` seconds), ``tasks_executed`` and ``tasks_per_sec`` over the
        window,
        ``window_s``, ``started_at`` (ms), ``samples``, ``profiled_time_s`` (wall
        seconds the samples stand for), ``profiled_cpu_s`` (CPU seconds of the sampled
        threads, 0 without CPU clocks), ``hotspot_clock`` (``"cpu"`` or ``"wall"``: what
        ``code_hotspots`` ranks by), ``sampler_cpu_s`` (CPU seconds the samplers took
        on the workers' event loops), ``idle_wait_s``, ``profile_source``,
        ``scheduler_metered_s`` and ``scheduler_extensions_s`` (the seconds the
        scheduler was metered, and the part Foundation's extensions held its event loop;
        None without the meter).
    node_details
        One row per node (columns :data:`~foundation_dask.scope.profiling.NODE_COLUMNS`):
        ``status`` is ``success``, ``rpc_failed`` (with ``error``) or ``unreachable``;
        ``health`` is the :class:`~foundation_dask.HealthMonitor` status; ``cpu`` is the
        process CPU % over the window; ``process_count`` counts Foundation processes other
        than the profiler; ``tasks_executed`` counts tasks run in the window, ``tasks_executing``
        and ``tasks_ready`` are the counts at analysis time; ``event_loop_lag`` is the
        longest delay of the event loop in the window (seconds).
    performance_bottlenecks
        ``{"type", "affected_nodes", "values", "threshold"}`` with type
        ``cpu_bottleneck``, ``memory_bottleneck``, ``event_loop_lag`` or ``straggler``
        (which adds ``prefix``, ``median_s`` and ``tasks``).
    optimization_suggestions
        ``{"kind", "message", "numbers"}`` with kind ``process_imbalance``,
        ``task_imbalance``, ``memory_pressure`` or ``idle_nodes``.
    code_hotspots
        Top functions by self time summed over the cluster (columns
        :data:`~foundation_dask.scope.profiling.HOTSPOT_COLUMNS`): ``function``
        (``module.qualname``), ``location`` (``file:first line``), ``self_time_s`` and
        ``total_time_s`` (the time ranked by: CPU seconds of the sampled threads when
        ``cluster_overview["hotspot_clock"]`` is ``"cpu"``, else wall seconds),
        ``self_wall_s`` and ``total_wall_s`` (wall seconds of busy threads, waits in
        the function included), ``samples`` (self), ``total_samples``, ``calls`` (tasks
        of the window, for functions of tasks), ``nodes``.
    thresholds
        The thresholds applied.
    notes
        What the analysis had to do or could not do (waits, partial windows...).
    session
        ``started_at`` (ms), ``duration_ms``, ``options`` of the session.
    profiles
        ``{node: call tree}`` of the window, in Dask's profile format.
    scheduler_extensions
        Foundation itself on the scheduler: the time its extensions (``channels``,
        ``processes``, ``health``, ``registry``, ``secrets``, ``scope``, ``dspex.lm``,
        ``plugin``) held the scheduler's event loop during the window, exclusive of
        each other (columns :data:`~foundation_dask.scope.profiling.EXTENSION_COLUMNS`:
        ``subsystem``, ``seconds``, ``calls``, ``share`` of the seconds metered; the
        last row sums them). Counted by a meter ElixirScope installs on the scheduler for
        the window (:mod:`~foundation_dask.scope.profiling._scheduler_meter`); empty
        when it could not run.
    """

    cluster_overview: dict[str, Any]
    node_details: pd.DataFrame
    performance_bottlenecks: list[dict[str, Any]]
    optimization_suggestions: list[dict[str, Any]]
    code_hotspots: pd.DataFrame
    thresholds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    session: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    scheduler_extensions: pd.DataFrame | None = field(default=None, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """The per-node table (a copy of :attr:`node_details`)."""
        return self.node_details.copy()

    def _summary(self) -> str:
        o = self.cluster_overview
        return (
            f"Cluster performance over {o['window_s']:.1f}s: {o['profiled_nodes']}/"
            f"{o['nodes']} nodes profiled ({o['healthy_nodes']} healthy), "
            f"{o['total_cores']} cores, CPU {_fmt(o['cpu_percent'], 'pct')} mean, memory "
            f"{_fmt(o['memory_bytes'], 'bytes')}, {o['tasks_per_sec']:.1f} tasks/s, "
            f"{_fmt(o['message_throughput_per_sec'])} msg/s, {o['samples']} samples"
        )

    def _scheduler_line(self) -> str | None:
        frame = self.scheduler_extensions
        if frame is None or not len(frame):
            return None
        total = frame.iloc[-1]
        parts = ", ".join(f"{r.subsystem} {r.seconds:.3f}s ({r.calls} calls)"
                          for r in frame.iloc[:-1].head(4).itertuples())
        return (f"Foundation on the scheduler: {total.seconds:.3f}s of "
                f"{self.cluster_overview.get('scheduler_metered_s') or 0:.1f}s metered "
                f"({100 * total.share:.2f}% of its event loop): {parts}")

    def _bottleneck_lines(self) -> list[str]:
        lines = []
        for b in self.performance_bottlenecks:
            if b["type"] == "straggler":
                worst = b["values"][0]
                lines.append(
                    f"{b['type']} {b['prefix']}: {len(b['values'])} of {b['tasks']} tasks > "
                    f"{b['threshold']:g}x median {b['median_s']:.3f}s (worst {worst['key']} "
                    f"{worst['duration_s']:.3f}s on {worst['node']})"
                )
            else:
                vals = ", ".join(f"{n}={v:.3g}" for n, v in sorted(b["values"].items()))
                lines.append(f"{b['type']} (> {b['threshold']:g}): {vals}")
        return lines

    def __repr__(self) -> str:
        lines = [f"<PerformanceReport> {self._summary()}"]
        for n in self.node_details.itertuples():
            lines.append(
                f"  {n.node} {n.status}: cpu {_fmt(n.cpu, 'pct')}, memory "
                f"{_fmt(n.memory, 'pct')}, tasks {_fmt(n.tasks_executed)}, lag "
                f"{_fmt(n.event_loop_lag, 's')}" + (f", error {n.error}" if n.error else "")
            )
        for line in self._bottleneck_lines():
            lines.append(f"  bottleneck: {line}")
        for s in self.optimization_suggestions:
            lines.append(f"  suggestion [{s['kind']}]: {s['message']}")
        clock = self.cluster_overview.get("hotspot_clock", "wall")
        for h in self.code_hotspots.head(5).itertuples():
            wall = f" (wall {h.self_wall_s:.2f}s)" if clock == "cpu" else ""
            lines.append(
                f"  hotspot: {h.function} ({h.location}) self {h.self_time_s:.2f}s {clock}"
                f"{wall} total {h.total_time_s:.2f}s on {', '.join(h.nodes)}"
            )
        scheduler = self._scheduler_line()
        if scheduler:
            lines.append(f"  {scheduler}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        nodes = self.node_details[[
            "node", "status", "health", "cpu", "memory", "memory_bytes", "threads",
            "process_count", "tasks_executed", "tasks_executing", "tasks_ready",
            "event_loop_lag", "top_function", "error",
        ]].copy()
        nodes["cpu"] = nodes["cpu"].map(lambda v: _fmt(v, "pct"))
        nodes["memory"] = nodes["memory"].map(lambda v: _fmt(v, "pct"))
        nodes["memory_bytes"] = nodes["memory_bytes"].map(lambda v: _fmt(v, "bytes"))
        nodes["event_loop_lag"] = nodes["event_loop_lag"].map(lambda v: _fmt(v, "s"))
        hot = self.code_hotspots.head(10)[
            ["function", "location", "self_time_s", "total_time_s", "self_wall_s", "samples",
             "calls", "nodes"]
        ]

        def items(lines: list[str]) -> Safe:
            if not lines:
                return Safe("none")
            return Safe("<ul>" + "".join(f"<li>{escape(t)}</li>" for t in lines) + "</ul>")

        # DataFrame.to_html escapes every cell
        fields: list[tuple[str, Any]] = [
            ("Nodes", Safe(nodes.to_html(index=False, na_rep="-"))),
            ("Bottlenecks", items(self._bottleneck_lines())),
            ("Suggestions", items([s["message"] for s in self.optimization_suggestions])),
            ("Code hotspots", Safe(hot.to_html(index=False, na_rep="-"))),
        ]
        if self.scheduler_extensions is not None and len(self.scheduler_extensions):
            table = self.scheduler_extensions.copy()
            table["seconds"] = table["seconds"].map(lambda v: f"{v:.4f}")
            table["share"] = table["share"].map(lambda v: f"{100 * v:.2f}%")
            fields.append(("Foundation on the scheduler", Safe(
                escape(self._scheduler_line() or "") + table.to_html(index=False))))
        if self.notes:
            fields.append(("Notes", items(self.notes)))
        return html_repr(repr(self), "PerformanceReport", summary=self._summary(),
                         fields=fields)
