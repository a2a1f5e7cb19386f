"""Client: live notebook panels, ipywidgets controls around the Bokeh views.

>>> from foundation_dask.widgets import LiveDashboard, OptimizationDashboard
>>> LiveDashboard()            # doctest: +SKIP
>>> OptimizationDashboard()    # doctest: +SKIP

A panel refreshes its views in a background thread every ``refresh`` seconds, so the
kernel stays free; ``panel.refresh()`` refreshes once, now. Actions (buttons) report
their outcome as flash messages. Every panel also renders as a text and an HTML
summary where widgets cannot be shown.

Modules: ``_base`` (:class:`BokehPane`, the common part of the panels), ``_live``
(:class:`LiveDashboard`), ``_optimization`` (:class:`OptimizationDashboard`),
``_unified`` (:class:`UnifiedDashboard`) and ``_frontend`` (the toolkit's own front-end
widgets: :class:`DownloadWidget`, :class:`FlashMessages`).
"""

from __future__ import annotations

from foundation_dask.widgets._base import BokehPane, bokeh_widget, load_bokehjs
from foundation_dask.widgets._frontend import DownloadWidget, FlashMessages
from foundation_dask.widgets._live import LiveDashboard
from foundation_dask.widgets._optimization import OptimizationDashboard
from foundation_dask.widgets._unified import UnifiedDashboard

__all__ = ["BokehPane", "DownloadWidget", "FlashMessages", "LiveDashboard",
           "OptimizationDashboard", "UnifiedDashboard", "bokeh_widget", "load_bokehjs"]
