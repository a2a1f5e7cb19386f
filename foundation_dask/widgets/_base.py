"""Client: what every notebook panel shares: :class:`Panel` (a widget tree, views, a
refresh thread, flash messages) and :class:`BokehPane` (a Bokeh layout as an ipywidget).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import ipywidgets as W
from bokeh.events import DocumentReady
from jupyter_bokeh.widgets import BokehModel

from foundation_dask._html import html_repr
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


class BokehPane(BokehModel):
    """A ``jupyter_bokeh.BokehModel`` whose browser views do not miss changes made
    before they were rendered.

    A view is built from ``render_bundle`` (the document as it was when the bundle was
    made) and then applies the changes the kernel sends; a change sent before the view
    exists is lost for it: one made by the refresh at display time, or while Voila's page
    is not connected yet. The view then shows a stale document for good (lines added
    later are missing, a streamed history is shorter than the kernel's).

    So, from :meth:`expect_view` (called when a panel is displayed) until a view reports
    its document ready, changes are not sent; when the view is ready, the bundle is made
    again if anything changed meanwhile (the view re-renders from it). If no view reports
    ready within :attr:`ready_timeout` seconds, changes are sent again.

    Parameters
    ----------
    model
        The Bokeh layout to show.
    lock
        Held by whoever changes the document from another thread (a panel's refresh
        lock), so that the bundle is made between two changes.
    """

    #: Seconds to wait for a view to report its document ready.
    ready_timeout = 60.0

    def __init__(self, model: Any, lock: Any = None, **kwargs: Any) -> None:
        self.lock = lock if lock is not None else threading.RLock()
        self._waiting_since: float | None = None
        self._stale = False  # the document changed since render_bundle was made
        super().__init__(model, **kwargs)
        self._document.on_event(DocumentReady, self._view_ready)

    def expect_view(self) -> None:
        """A view is coming: hold changes back until it is ready (call with the lock)."""
        if self._stale:
            self._rebundle()
        self._waiting_since = time.monotonic()

    def _rebundle(self) -> None:
        self._stale = False
        self.render_bundle = self._model_to_traits(self._model)

    def _document_patched(self, event: Any) -> None:
        if event.setter is self:  # came from the browser
            return
        self._stale = True
        if self._waiting_since is not None:
            if time.monotonic() - self._waiting_since < self.ready_timeout:
                return  # the bundle made when the view is ready includes it
            self._waiting_since = None
            self._rebundle()  # includes this change
            return
        super()._document_patched(event)

    def _view_ready(self, _event: Any) -> None:
        with self.lock:
            if self._waiting_since is None:
                return
            self._waiting_since = None
            if self._stale:
                self._rebundle()


def _panes(widget: W.Widget) -> list[BokehPane]:
    """The :class:`BokehPane` s in a widget tree."""
    found, stack = [], [widget]
    while stack:
        w = stack.pop()
        if isinstance(w, BokehPane):
            found.append(w)
        stack.extend(getattr(w, "children", None) or ())
    return found


def bokeh_widget(model: Any) -> W.DOMWidget:
    """A Bokeh model as an ipywidget (a :class:`BokehPane`)."""
    return BokehPane(model)


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.widget: W.Widget = W.VBox()
        self._autostart = autostart and refresh is not None

    # -- refreshing ------------------------------------------------------------------

    def refresh(self) -> None:
        """Refresh every view once (fetch from the cluster, push to the browser)."""
        with self._lock:
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
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.refresh_interval or 3.0)

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
        with self._lock:
            for pane in _panes(self.widget):
                pane.lock = self._lock
                pane.expect_view()
        if self._autostart:
            self.start()
        bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude) or {}
        bundle["text/plain"] = repr(self)
        bundle.setdefault("text/html", self._repr_html_())
        return bundle


__all__ = ["BokehPane", "Panel", "bokeh_widget", "load_bokehjs"]
