"""Client: an evaluation's per-example results written to JSON or CSV files (DSPy's
``save_as_json`` / ``save_as_csv`` of ``Evaluate``).

One record per example: the example's fields and the prediction's (a name in both is
written ``example_<name>`` and ``pred_<name>``), and the score under the metric's name.
Values JSON cannot hold (a :class:`~foundation_dask.dspex.History`, pydantic models) are
written as their ``model_dump()``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from typing import Any

from foundation_dask.dspex.predict import serialize_object

__all__ = ["result_records", "save_results"]


def _as_dict(value: Any) -> dict[str, Any] | None:
    if hasattr(value, "toDict"):
        return value.toDict()
    if isinstance(value, dict):
        return dict(value)
    return None


def result_records(results: Sequence[tuple[Any, Any, float]], metric_name: str
                   ) -> list[dict[str, Any]]:
    """``[(example, prediction, score)]`` as flat records."""
    out = []
    for example, prediction, score in results:
        ex = _as_dict(example) or {}
        pred = _as_dict(prediction)
        if pred is None:
            record = {**ex, "prediction": prediction}
        else:
            record = {(f"example_{k}" if k in pred else k): v for k, v in ex.items()}
            record.update({(f"pred_{k}" if k in ex else k): v for k, v in pred.items()})
        record[metric_name] = score
        out.append({k: serialize_object(v) for k, v in record.items()})
    return out


def save_results(results: Sequence[tuple[Any, Any, float]], metric: Callable, *,
                 save_as_json: str | None = None, save_as_csv: str | None = None) -> None:
    """Write the records to ``save_as_json`` and/or ``save_as_csv`` (paths)."""
    name = getattr(metric, "__name__", None) or type(metric).__name__
    records = result_records(results, name)
    if save_as_json:
        with open(save_as_json, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=2, default=str)
    if save_as_csv:
        columns = list(dict.fromkeys(k for r in records for k in r))
        with open(save_as_csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)
