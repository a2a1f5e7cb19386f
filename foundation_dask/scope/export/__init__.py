"""Any process: export of collected traces, as ElixirScope JSON, Chrome trace events and
OTLP/JSON.

Three formats, each returned as a plain ``dict`` of JSON values (and written to
``path`` when one is given):

* :func:`to_json`: the trace as recorded (``format: "foundation_dask.trace/1"``):
  the coordinator's record, every event with epoch-nanosecond and ISO timestamps,
  the summary, errors, missing and lost nodes and clock offsets.
* :func:`to_chrome_trace`: the Chrome Trace Event Format (JSON object form) that
  Perfetto (https://ui.perfetto.dev) and ``chrome://tracing`` load. One process per
  node, one thread per thread, flow arrows from a span to its children on other
  nodes or threads, errors as instant events, data transfers of tasks as slices.
* :func:`to_otlp_json`: OpenTelemetry ``TracesData`` in the OTLP/JSON encoding, one
  ``resourceSpans`` per node, ready for an OTLP/HTTP collector
  (``POST /v1/traces`` with ``Content-Type: application/json``) or any tool that
  reads OTLP files.

Files are written atomically: to a temporary file in the target directory, then
renamed over the target. A path that cannot be written raises :class:`ExportError`
(an :class:`OSError`) and leaves nothing at the path.

Clocks: every ``TraceData`` timestamp, the transfer intervals of tasks
(``attrs["transfers"]``) included, is already on the clock of the collecting process
(see :mod:`foundation_dask.scope.collect`); the exports write them as they are.
"""

from foundation_dask.errors import ExportError
from foundation_dask.scope.export._chrome import CHROME_FORMAT, to_chrome_trace
from foundation_dask.scope.export._json import JSON_FORMAT, to_json
from foundation_dask.scope.export._otlp import (
    OTLP_SCOPE,
    SPAN_KIND_CLIENT,
    SPAN_KIND_CONSUMER,
    SPAN_KIND_INTERNAL,
    SPAN_KIND_PRODUCER,
    SPAN_KIND_SERVER,
    STATUS_CODE_ERROR,
    STATUS_CODE_OK,
    to_otlp_json,
)

__all__ = [
    "CHROME_FORMAT", "JSON_FORMAT", "OTLP_SCOPE", "SPAN_KIND_CLIENT", "SPAN_KIND_CONSUMER",
    "SPAN_KIND_INTERNAL", "SPAN_KIND_PRODUCER", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR",
    "STATUS_CODE_OK", "ExportError", "to_chrome_trace", "to_json", "to_otlp_json",
]
