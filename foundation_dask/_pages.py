"""Scheduler: the registry of the Foundation pages of the Dask dashboard, and how a page
is served.

Each page module (:mod:`foundation_dask.views.pages`) registers its page with
:func:`register_page` when it is imported; :mod:`foundation_dask.dashboard` imports
them and adds what is registered to Dask's dashboard. A page is a function
``make_document(scheduler, doc)`` that builds its views and returns ``(root,
refresh)``: the Bokeh model to show and the function (or coroutine function) that
refreshes it. :class:`Page` does the rest for every new session: the document's
title and theme, a refresh now (or on the next tick for a coroutine function) and every
``refresh_ms`` milliseconds, one refresh at a time, each distinct failure logged once.

This module imports no view and no Bokeh, so that the page modules and the dashboard
module both import it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import distributed
    from bokeh.document import Document

logger = logging.getLogger("foundation_dask.dashboard")

#: What the paths of the pages start with (dask-labextension lists ``/individual-*``).
PREFIX = "/individual-foundation-"

#: ``make_document(scheduler, doc) -> (root, refresh)``.
MakeDocument = Callable[["distributed.Scheduler", "Document"], tuple[Any, Callable[[], Any]]]


class Refresher:
    """Runs one refresh of a page at a time; logs each distinct failure once.

    Parameters
    ----------
    name
        The page (or part of a page) in the log messages.
    refresh
        A function or a coroutine function.
    """

    def __init__(self, name: str, refresh: Callable[[], Any]) -> None:
        self.name = name
        self.refresh = refresh
        self.running = False
        self.last_error: str | None = None

    def _failed(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self.last_error:
            logger.exception("Foundation dashboard page %s: refresh failed", self.name)
        self.last_error = text

    def run_now(self) -> None:
        """Refresh synchronously (``refresh`` must not be a coroutine function)."""
        try:
            self.refresh()
            self.last_error = None
        except Exception as exc:
            self._failed(exc)

    async def __call__(self) -> None:
        """Refresh, awaiting the result if it is awaitable (skipped while one runs)."""
        if self.running:
            return
        self.running = True
        try:
            result = self.refresh()
            if inspect.isawaitable(result):
                await result
            self.last_error = None
        except Exception as exc:
            self._failed(exc)
        finally:
            self.running = False


def _theme(doc: Document) -> None:
    try:
        from distributed.dashboard.components.scheduler import BOKEH_THEME
    except ImportError:  # pragma: no cover - Dask's dashboard without its components
        return
    doc.theme = BOKEH_THEME


class Page:
    """A page of the dashboard: what :func:`register_page` records.

    Dask's dashboard calls it as ``page(scheduler, extra, doc)`` for every new session
    (the form of the functions in ``distributed.dashboard.scheduler.applications``).

    Attributes
    ----------
    name
        The last part of its path: ``/individual-foundation-<name>``.
    make_document
        ``make_document(scheduler, doc) -> (root, refresh)``.
    title
        The document's title is ``"Foundation: <title>"``.
    refresh_ms
        Milliseconds between refreshes.
    """

    def __init__(self, name: str, make_document: MakeDocument, *, title: str,
                 refresh_ms: int) -> None:
        self.name = name
        self.make_document = make_document
        self.title = title
        self.refresh_ms = refresh_ms

    @property
    def path(self) -> str:
        """``/individual-foundation-<name>``."""
        return PREFIX + self.name

    def __call__(self, scheduler: distributed.Scheduler, extra: dict[str, Any],
                 doc: Document) -> None:
        """Build the page in ``doc``: its views, the first data, the periodic refresh."""
        root, refresh = self.make_document(scheduler, doc)
        refresher = Refresher(self.name, refresh)
        doc.title = f"Foundation: {self.title}"
        _theme(doc)
        doc.add_root(root)

        async def tick() -> None:
            await refresher()

        if inspect.iscoroutinefunction(refresh):
            doc.add_next_tick_callback(tick)  # type: ignore[arg-type]  # Bokeh awaits it
        else:  # the first data goes out with the document
            refresher.run_now()
        doc.add_periodic_callback(tick, self.refresh_ms)  # type: ignore[arg-type]  # awaited

    def __repr__(self) -> str:
        return f"<Page {self.path} {self.title!r} every {self.refresh_ms} ms>"


#: ``{path: page}`` of the registered pages, in the order they were registered.
_registry: dict[str, Page] = {}


def register_page(name: str, make_document: MakeDocument, *, title: str,
                  refresh_ms: int) -> Page:
    """Register the page ``/individual-foundation-<name>`` (replacing one of that name).

    Parameters
    ----------
    name
        The last part of the page's path.
    make_document
        ``make_document(scheduler, doc) -> (root, refresh)``: builds the page's views in
        a new document and returns its root model and its refresh function (a function
        or a coroutine function, called every ``refresh_ms``).
    title
        Shown as the document's title, ``"Foundation: <title>"``.
    refresh_ms
        Milliseconds between refreshes.

    Returns
    -------
    Page
        What the dashboard serves at :attr:`Page.path`.
    """
    page = Page(name, make_document, title=title, refresh_ms=refresh_ms)
    _registry[page.path] = page
    return page


def registered_pages() -> dict[str, Page]:
    """``{path: page}`` of the registered pages (the registry itself: it stays current)."""
    return _registry


__all__ = ["PREFIX", "MakeDocument", "Page", "Refresher", "register_page", "registered_pages"]
