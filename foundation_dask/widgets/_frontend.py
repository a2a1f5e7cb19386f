"""Client: the toolkit's own front-end widgets (anywidget ESM + CSS, no build step).

The JavaScript and CSS live in the repository's top-level ``widgets/`` folder and are
shipped inside the wheel as ``foundation_dask/_frontend``.
"""

from __future__ import annotations

import itertools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import anywidget
import traitlets


def frontend_dir() -> Path:
    """Where the front-end files are: inside the installed package, or the source tree."""
    packaged = Path(str(resources.files("foundation_dask"))) / "_frontend"
    if packaged.is_dir():
        return packaged
    source = Path(__file__).resolve().parents[2] / "widgets"
    if source.is_dir():
        return source
    raise FileNotFoundError(
        "foundation_dask's front-end files are missing (neither foundation_dask/_frontend nor "
        "the source tree's widgets/ folder exists); reinstall foundation-dask."
    )


def _asset(name: str) -> Path:
    return frontend_dir() / name


class DownloadWidget(anywidget.AnyWidget):
    """Triggers a file download in the browser with content produced in the kernel."""

    _esm = _asset("download.js")
    _css = _asset("foundation.css")
    filename = traitlets.Unicode("download.json").tag(sync=True)
    content = traitlets.Unicode("").tag(sync=True)
    mime = traitlets.Unicode("application/json").tag(sync=True)
    request = traitlets.Int(0).tag(sync=True)
    delivered = traitlets.Int(0).tag(sync=True)

    def send(self, content: str | bytes | dict | list, filename: str,
             mime: str = "application/json") -> int:
        """Download ``content`` as ``filename``; returns the request number."""
        if isinstance(content, (dict, list)):
            content = json.dumps(content, indent=1, default=str)
        elif isinstance(content, bytes):
            content = content.decode()
        with self.hold_sync():
            self.filename = filename
            self.mime = mime
            self.content = content
            self.request = self.request + 1
        return self.request


_ids = itertools.count(1)


class FlashMessages(anywidget.AnyWidget):
    """Toast messages reporting the result of each action (info, success, warning, error)."""

    _esm = _asset("flash.js")
    _css = _asset("foundation.css")
    messages = traitlets.List(traitlets.Dict()).tag(sync=True)
    timeout_ms = traitlets.Int(4000).tag(sync=True)

    def flash(self, text: str, level: str = "info") -> dict[str, Any]:
        """Show ``text``; ``level`` is info, success, warning or error."""
        if level not in ("info", "success", "warning", "error"):
            raise ValueError(f"level must be info, success, warning or error, not {level!r}")
        msg = {"id": next(_ids), "level": level, "text": str(text)}
        self.messages = [*self.messages[-19:], msg]
        return msg

    @property
    def last(self) -> dict[str, Any] | None:
        return self.messages[-1] if self.messages else None

    def __repr__(self) -> str:
        last = self.last
        return f"<FlashMessages last={last['level'] + ': ' + last['text'] if last else None}>"
