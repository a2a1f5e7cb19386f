"""Client: live notebook panels, ipywidgets controls around the Bokeh views.

>>> from foundation_dask.widgets import LiveDashboard, OptimizationDashboard
>>> LiveDashboard()            # doctest: +SKIP
>>> OptimizationDashboard()    # doctest: +SKIP

A panel refreshes its views in a background thread every ``refresh`` seconds, so the
kernel stays free; ``panel.refresh()`` refreshes once, now. Actions (buttons) report
their outcome as flash messages. Every panel also renders as a text and an HTML
summary where widgets cannot be shown.

The panels stay live while the kernel runs another cell: what the kernel sends to the
page travels on iopub, which a busy kernel still sends, and the Bokeh document of each
view lives in the widget's model in the page (:class:`BokehPane`), so nothing waits for
a reply from the page. Clicks reach a busy kernel through a kernel subshell (JupyterLab
4.4+ with ipykernel 7); without subshells they wait for the running cell to end.

Modules: ``_base`` (the common part of the panels), ``_bokeh`` (:class:`BokehPane`),
``_live`` (:class:`LiveDashboard`), ``_optimization`` (:class:`OptimizationDashboard`),
``_unified`` (:class:`UnifiedDashboard`) and ``_frontend`` (the toolkit's own front-end
widgets: :class:`DownloadWidget`, :class:`FlashMessages`).
"""

from __future__ import annotations

from foundation_dask.widgets._base import bokeh_widget, load_bokehjs
from foundation_dask.widgets._bokeh import BokehPane
from foundation_dask.widgets._frontend import DownloadWidget, FlashMessages
from foundation_dask.widgets._live import LiveDashboard
from foundation_dask.widgets._optimization import OptimizationDashboard
from foundation_dask.widgets._unified import UnifiedDashboard

__all__ = ["BokehPane", "DownloadWidget", "FlashMessages", "LiveDashboard",
           "OptimizationDashboard", "UnifiedDashboard", "bokeh_widget", "load_bokehjs"]
