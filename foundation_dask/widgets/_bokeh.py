"""Client: :class:`BokehPane`, a Bokeh layout as an ipywidget whose page stays current
while the kernel runs other cells, and :func:`route_to_sender`, which lets a widget's
clicks reach the kernel while it is busy.

Why not ``jupyter_bokeh.BokehModel``: its document lives in each browser *view*, built
from a bundle and then patched by messages that reach only the views existing when they
arrive, so a view created a moment after a change shows a stale document for good; and
each patch travels as five or more messages a view must receive in order. Here the
document lives in the widget's *model* in the page (``widgets/bokeh.js``): the model
exists from the widget's creation on and receives every message in order, views render
copies of it. Nothing waits for a message from the page, so a busy kernel (whose shell
channel is blocked, while iopub still flows) keeps the page current.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import anywidget
import traitlets
from bokeh.core.json_encoder import serialize_json
from bokeh.core.serialization import Deserializer, Serialized
from bokeh.document import Document
from bokeh.model import Model
from bokeh.models import ColumnDataSource
from bokeh.protocol import Protocol

from foundation_dask.widgets._frontend import _asset

logger = logging.getLogger(__name__)


class BokehPane(anywidget.AnyWidget):
    """A Bokeh model (a layout, a figure, a table) shown as an ipywidget.

    Every change to the model's document, from any thread, is sent to the page at once
    as one message (a Bokeh ``PATCH-DOC``), and applied there to the document the
    widget's model holds, whether or not a view is showing it. A page that asks for the
    widget's state (a reload, a Voila page connecting) gets the document as it is then.
    Patches are numbered and the bundle carries the number of the last one it holds: a
    page that misses one (sent while it was building the widget's model) sees the gap
    at the next and asks for the whole document again (counted in :attr:`resyncs`).
    Changes made in the page (a selected row, a zoom) are applied to the kernel's
    document.

    Parameters
    ----------
    model
        The Bokeh model to show; it becomes the root of a new document unless it is in
        one already.
    lock
        Held while the bundle is made and while changes from the page are applied, so
        that neither interleaves with a change made in another thread (a panel passes
        its refresh lock).
    """

    _esm = _asset("bokeh.js")
    _css = _asset("foundation.css")
    pane_id = traitlets.Unicode("").tag(sync=True)
    bundle = traitlets.Unicode("{}").tag(sync=True)

    def __init__(self, model: Any, lock: Any = None, **kwargs: Any) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"a BokehPane shows a Bokeh model, not {type(model).__name__}")
        self.lock = lock if lock is not None else threading.RLock()
        self._model = model
        if model.document is None:
            Document().add_root(model)
        #: Patches sent to the page (a count, for tests and benchmarks); each carries
        #: its number, and the bundle the number of the last patch it contains.
        self.patches_sent = 0
        #: Times a page found a patch missing and was sent the whole document again.
        self.resyncs = 0
        super().__init__(pane_id=uuid.uuid4().hex, bundle=self._make_bundle(), **kwargs)
        self._document.on_change_dispatch_to(self)
        self.on_msg(self._from_page)
        route_to_sender(self)

    @property
    def _document(self) -> Document:
        doc = self._model.document
        if doc is None:  # removed from its document by someone else
            raise RuntimeError("the pane's Bokeh model is in no document")
        return doc

    @property
    def model(self) -> Any:
        """The Bokeh model shown."""
        return self._model

    def _make_bundle(self) -> str:
        with self.lock:
            return serialize_json({"doc": self._document.to_json(deferred=False),
                                   "root": self._model.id, "seq": self.patches_sent})

    def rebundle(self) -> None:
        """Send the whole document again (the page re-renders every view from it)."""
        with self.lock:  # no patch sent between the bundle made and the bundle sent
            self._trait_values["bundle"] = self._make_bundle()
            self.send_state("bundle")

    def get_state(self, key: Any = None, drop_defaults: bool = False) -> dict[str, Any]:
        """ipywidgets' state; the whole state (what a page that connects asks for, one
        widget at a time or all at once) carries the document as it is now, not as it
        was when the widget was made. The pages already showing it are not told (they
        follow the document)."""
        if key is None:
            self._trait_values["bundle"] = self._make_bundle()
        return super().get_state(key=key, drop_defaults=drop_defaults)

    def bundled_document(self) -> Document:
        """The document the page builds from :attr:`bundle` (a new Python copy of it)."""
        import json

        return Document.from_json(json.loads(self.bundle)["doc"])

    # -- kernel -> page --------------------------------------------------------------

    def _document_patched(self, event: Any) -> None:
        """Bokeh calls this for every change of the document (``on_change_dispatch_to``)."""
        if event.setter is self:  # came from the page
            return
        doc = self._document
        pending = getattr(_batching, "pending", None)
        if pending is not None:  # inside batched_changes(): sent at its end
            events, panes = pending.setdefault(doc, ([], []))
            if not events or events[-1] is not event:  # each pane of doc sees it
                events.append(event)
            if self not in panes:
                panes.append(self)
            return
        content, buffers = _patch_message(doc, [event])
        self._send_patch(content, buffers)

    def _send_patch(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        with self.lock:  # numbered in the order sent, and never inside a bundle made
            self.patches_sent += 1
            self.send({**content, "seq": self.patches_sent}, buffers)

    # -- page -> kernel --------------------------------------------------------------

    def _from_page(self, _widget: Any, content: dict[str, Any], _buffers: list[Any]) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "resync":
            # The page missed a patch: one sent while it was still building the
            # widget's model from the state it had asked for (the front end drops a
            # message for a comm it does not know yet). It has dropped what came since
            # and waits for the whole document.
            logger.info("pane %s: the page had patch %s, then got %s; sending the "
                        "document again", self.pane_id, content.get("have"),
                        content.get("got"))
            self.resyncs += 1
            self.rebundle()
        elif kind == "event":
            with self.lock, batched_changes():  # what Python callbacks change, in one
                self._apply_page_event(content["event"])  # message

    def _apply_page_event(self, rep: dict[str, Any]) -> None:
        doc = self._document
        event = Deserializer(list(doc.models), setter=self).deserialize(
            Serialized(content=rep, buffers=[]))
        kind = event["kind"]
        if kind == "ModelChanged":
            model, attr, new = event["model"], event["attr"], event["new"]
            descriptor = model.lookup(attr)
            new = descriptor.property.prepare_value(model, descriptor.name, new)
            # runs the model's Python callbacks once (``on_change``)
            descriptor._set(model, descriptor._get(model), new, setter=self)
        elif kind == "ColumnsStreamed" and isinstance(event["model"], ColumnDataSource):
            event["model"]._stream(  # type: ignore[attr-defined]  # Bokeh's, with a setter
                event["data"], event["rollover"], setter=self)
        elif kind == "ColumnsPatched" and isinstance(event["model"], ColumnDataSource):
            event["model"].patch(event["patches"], setter=self)
        elif kind == "MessageSent" and event["msg_type"] == "bokeh_event":
            doc.callbacks.trigger_event(event["msg_data"])

    def close(self) -> None:
        """Close the widget and stop following the document."""
        doc = self._model.document
        if doc is not None:
            doc.remove_on_change(self)
        super().close()


#: The last change of each document and its message. Bokeh sends a model's definition
#: once per document (later messages refer to it by id), so every pane of a document
#: must send the same message for a change, made once.
_last_patch: weakref.WeakKeyDictionary[Document, tuple[Any, tuple[dict[str, Any], list[bytes]]]]
_last_patch = weakref.WeakKeyDictionary()

_batching = threading.local()


def _patch_message(doc: Document, events: list[Any]) -> tuple[dict[str, Any], list[bytes]]:
    """The message of ``events`` (changes of ``doc``), made once for all its panes."""
    last = _last_patch.get(doc)
    if last is not None and len(events) == 1 and last[0] is events[0]:
        return last[1]
    msg = Protocol().create("PATCH-DOC", events)
    made = ({"type": "patch", "content": msg.content_json,
             "buffers": [str(b.id) for b in msg.buffers]},
            [b.to_bytes() for b in msg.buffers])
    _last_patch[doc] = (events[0] if len(events) == 1 else None, made)
    return made


@contextlib.contextmanager
def batched_changes() -> Iterator[None]:
    """Send the changes made in this thread inside the block as one message per document
    (and pane), at its end.

    A refresh changes many models (data, titles, axes, new lines); sent one by one, the
    page lays a plot out between two of them while it is still building the views of
    the first (BokehJS then fails with "cannot find a view for ..."), and does more work.
    Nested blocks send at the end of the outermost.
    """
    if getattr(_batching, "pending", None) is not None:
        yield
        return
    pending: dict[Document, tuple[list[Any], list[BokehPane]]] = {}
    _batching.pending = pending
    try:
        yield
    finally:
        _batching.pending = None
        for doc, (events, panes) in pending.items():
            content, buffers = _patch_message(doc, events)
            for pane in panes:
                pane._send_patch(content, buffers)


def route_to_sender(widget: Any) -> None:
    """Let what the page sends to ``widget`` (a click, a new value) reach the kernel while
    it runs another cell.

    JupyterLab (4.4 and later, setting "Kernel Comms over subshells", default "one
    subshell per comm target") sends widget messages to a kernel *subshell*, a thread of
    ipykernel 7 that runs beside the busy main shell. ipykernel 7.4 sends a comm's
    messages back to the subshell that last sent on the comm instead, which for a panel
    made in a cell is the main shell (busy). For the panels' widgets, whose handlers are
    thread-safe and wait for no cell, the subshell the page picked is kept. Without
    subshells (an older kernel or front end) the messages wait for the running cell, as
    before.
    """
    comm = getattr(widget, "comm", None)
    if comm is not None and hasattr(comm, "_reply_subshell_for"):
        comm._reply_subshell_for = _keep_senders_subshell


def _keep_senders_subshell(_data: Any, default: Any) -> Any:
    return default


__all__ = ["BokehPane", "batched_changes", "route_to_sender"]
