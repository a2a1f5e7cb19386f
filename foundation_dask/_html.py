"""Any process: the one helper behind every ``_repr_html_`` of the package.

Every value is escaped (a trace's scope name, a registry key or an LM output is user
text) unless it is marked :class:`Safe`; every repr embeds the object's text repr in a
``<pre class="fd-text-repr-fallback">`` that the stylesheet hides, so a front end that
drops styles (GitHub, some mail clients) still shows the text, as xarray does.

>>> html_repr("Point(1, 2)", "Point", fields=[("x", 1), ("y", "<2>")])  # doctest: +ELLIPSIS
'<div class="fd-repr">...&lt;2&gt;...'
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Safe", "coloured", "escape", "html_repr"]

_STYLE = (
    "<style>.fd-text-repr-fallback{display:none}"
    ".fd-repr table{border-collapse:collapse}"
    ".fd-repr th,.fd-repr td{text-align:left;padding:1px 8px;vertical-align:top}"
    "</style>"
)


class Safe(str):
    """A string of HTML that :func:`html_repr` inserts as it is (already escaped)."""

    __slots__ = ()


def escape(value: Any) -> str:
    """``value`` as HTML text: escaped, unless it is :class:`Safe`."""
    return value if isinstance(value, Safe) else html.escape(str(value))


def coloured(text: Any, colour: str, *, bold: bool = True) -> Safe:
    """``text`` (escaped) in ``colour``, e.g. a status."""
    weight = "; font-weight: bold" if bold else ""
    return Safe(f'<span style="color: {html.escape(colour)}{weight}">{escape(text)}</span>')


def html_repr(text: str, title: str, *, summary: Any = None,
              fields: Iterable[tuple[Any, Any]] | None = None,
              header: Sequence[Any] | None = None,
              rows: Iterable[Sequence[Any]] | None = None) -> str:
    """The HTML repr of an object.

    Parameters
    ----------
    text
        The object's text repr: the fallback shown where styles are dropped.
    title
        Shown in bold first.
    summary
        A line after the title.
    fields
        ``(name, value)`` pairs, shown as a two-column table.
    header, rows
        A table: column names and rows of cells.

    Returns
    -------
    str
        HTML with every value escaped (unless :class:`Safe`).
    """
    parts = [_STYLE, '<div class="fd-repr">',
             f'<pre class="fd-text-repr-fallback">{html.escape(text)}</pre>',
             f"<div><b>{escape(title)}</b>"]
    if summary is not None:
        parts.append(f" {escape(summary)}")
    parts.append("</div>")
    if fields is not None:
        body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in fields)
        parts.append(f"<table>{body}</table>")
    if rows is not None:
        head = "".join(f"<th>{escape(h)}</th>" for h in header or ())
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                       for row in rows)
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</div>")
    return "".join(parts)
