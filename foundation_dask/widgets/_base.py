"""Client: what every notebook panel shares: :class:`Panel` (a widget tree, views, a
refresh thread, flash messages), shown through :class:`~foundation_dask.widgets._bokeh.BokehPane`
s (a Bokeh layout as an ipywidget).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import ipywidgets as W

from foundation_dask._html import html_repr
from foundation_dask.widgets._bokeh import BokehPane, batched_changes, route_to_sender
from foundation_dask.widgets._frontend import FlashMessages

logger = logging.getLogger("foundation_dask.widgets")

_inline_loaded = False


def load_bokehjs() -> None:
    """Load BokehJS into the notebook from the installed package (no CDN)."""
    global _inline_loaded
    if _inline_loaded:
        return
    try:
        from bokeh.io import output_notebook
        from bokeh.resources import INLINE

        output_notebook(resources=INLINE, hide_banner=True)
        _inline_loaded = True
    except Exception:  # not in a notebook
        logger.debug("BokehJS not loaded", exc_info=True)


def _widgets(widget: W.Widget) -> list[W.Widget]:
    """Every widget of a widget tree (``widget`` and its children, recursively)."""
    found, stack = [], [widget]
    while stack:
        w = stack.pop()
        found.append(w)
        stack.extend(getattr(w, "children", None) or ())
    return found


def _panes(widget: W.Widget) -> list[BokehPane]:
    """The :class:`BokehPane` s in a widget tree."""
    return [w for w in _widgets(widget) if isinstance(w, BokehPane)]


#: The open pane of each Bokeh model shown (by model id).
_panes_by_model: weakref.WeakValueDictionary[str, BokehPane] = weakref.WeakValueDictionary()


def bokeh_widget(model: Any) -> W.DOMWidget:
    """A Bokeh model as an ipywidget: its :class:`BokehPane`, made on the first call (a
    panel inside another shares its panes, so each change travels once)."""
    pane = _panes_by_model.get(model.id)
    if pane is None or pane.comm is None:  # none yet, or closed
        pane = _panes_by_model[model.id] = BokehPane(model)
    return pane


def controls_row(*children: W.Widget) -> W.HBox:
    """A row of controls that wraps when the panel is narrow (a squeezed row cut the
    labels: "Optimizati...")."""
    for child in children:
        child.layout.flex = "0 0 auto"  # each control keeps its width
    return W.HBox(list(children), layout=W.Layout(flex_flow="row wrap"))


T = TypeVar("T")


#: The numpydoc parameters every panel takes (``%(panel_parameters)s`` in a docstring).
PANEL_PARAMETERS = """Parameters
    ----------
    refresh
        Seconds between refreshes (``None``: only on :meth:`refresh`).
    autostart
        Start refreshing when the panel is displayed."""


def panel_doc(cls: type[T]) -> type[T]:
    """Class decorator: ``%(panel_parameters)s`` in ``cls``'s docstring becomes
    :data:`PANEL_PARAMETERS`."""
    cls.__doc__ = (cls.__doc__ or "").replace("%(panel_parameters)s", PANEL_PARAMETERS)
    return cls


@panel_doc
class Panel:
    """The common part of the panels: a widget tree, views, a refresh thread, flash
    messages, and the text and HTML summaries shown where widgets cannot be.

    %(panel_parameters)s
    """

    title = "Panel"

    def __init__(self, refresh: float | None = 3.0, autostart: bool = True) -> None:
        self.flash = FlashMessages()
        self.views: list[Any] = []
        self.errors: list[str] = []
        self.refresh_interval = refresh
        self.refreshes = 0
        #: ``(time.time() at the start, seconds)`` of the last 100 refreshes.
        self.refresh_log: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=100)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()  # also the panes' lock: held by page events too
        self.widget: W.Widget = W.VBox()
        self._autostart = autostart and refresh is not None

    # -- refreshing ------------------------------------------------------------------

    @contextlib.contextmanager
    def changing(self) -> Iterator[None]:
        """Hold the panel's lock and send the Bokeh changes made meanwhile as one message
        per document (:func:`~foundation_dask.widgets._bokeh.batched_changes`). The
        refresh, the buttons and the page's events change the views inside it."""
        with self._lock, batched_changes():
            yield

    def refresh(self) -> None:
        """Refresh every view once (fetch from the cluster, push to the browser)."""
        started, t0 = time.time(), time.perf_counter()
        with self.changing():
            for view in self.views:
                try:
                    view.update()
                except Exception as exc:  # a refresh never takes the panel down
                    msg = f"{type(view).__name__}: {type(exc).__name__}: {exc}"
                    self.errors.append(msg)
                    del self.errors[:-20]
                    logger.debug("refresh failed: %s", msg, exc_info=True)
            self._after_refresh()
            self.refreshes += 1
        self.refresh_log.append((started, time.perf_counter() - t0))

    def _after_refresh(self) -> None:
        """Hook for panels that derive controls from the refreshed data."""

    def start(self) -> None:
        """Refresh every ``refresh`` seconds in a background thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"{self.title} refresh",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():  # one refresh every interval, however long it took
            t0 = time.monotonic()
            self.refresh()
            interval = self.refresh_interval or 3.0
            self._stop.wait(max(0.05, interval - (time.monotonic() - t0)))

    def stop(self) -> None:
        """Stop refreshing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread = None

    def close(self) -> None:
        """Stop refreshing and close the widgets."""
        self.stop()
        self.widget.close()

    # -- actions ---------------------------------------------------------------------

    def _action(self, label: str, fn: Callable[[], str | None]) -> Callable[[Any], None]:
        """A button handler that runs ``fn`` and flashes its outcome."""

        def handler(_button: Any = None) -> None:
            try:
                with self.changing():
                    text = fn()
            except Exception as exc:
                self.flash.flash(f"{label} failed: {type(exc).__name__}: {exc}", "error")
                return
            if text:
                self.flash.flash(text, "success")

        return handler

    # -- display ---------------------------------------------------------------------

    def summary(self) -> list[tuple[str, str]]:
        """(label, value) lines of the text/HTML fallback."""
        return []

    def __repr__(self) -> str:
        lines = [f"{self.title} (refreshed {self.refreshes} times)"]
        lines += [f"  {k}: {v}" for k, v in self.summary()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return html_repr(repr(self), self.title, fields=self.summary())

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        load_bokehjs()
        if self.refreshes == 0:
            self.refresh()
        for w in _widgets(self.widget):
            if isinstance(w, BokehPane):
                w.lock = self._lock
            route_to_sender(w)  # clicks reach the kernel while another cell runs
        if self._autostart:
            self.start()
        bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude) or {}
        bundle["text/plain"] = repr(self)
        bundle.setdefault("text/html", self._repr_html_())
        return bundle


__all__ = ["BokehPane", "Panel", "bokeh_widget", "controls_row", "load_bokehjs"]
