"""Worker and client: what the DSPEx optimizers do differently for DSPy programs.

A ``dspy.Module`` has the interface the DSPEx optimizers use (``named_predictors``,
``demos``, ``deepcopy``, ``reset_copy``), so ``dspex.BootstrapFewShot`` and friends
optimize it as it is and return a DSPy program that ``save``/``load`` round-trip. Two
things differ, and live here:

* :func:`capture_calls` (worker): a teacher run records its predictor calls in
  ``dspy.settings.trace`` (not in DSPEx's settings);
* :func:`as_dspy_demos` (client): the demos given to a DSPy predictor are
  ``dspy.Example`` objects, as DSPy's own optimizers make them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from foundation_dask.dspex.interop._dspy import require_dspy

__all__ = ["as_dspy_demos", "capture_calls"]


def _as_dict(value: Any) -> dict[str, Any]:
    if hasattr(value, "toDict"):
        return dict(value.toDict())
    return dict(value)


def capture_calls(program: Any, inputs: dict[str, Any]) -> tuple[Any, list[tuple[str, dict, dict]]]:
    """Run the DSPy ``program`` and record its predictor calls: (name, inputs, outputs)."""
    dspy = require_dspy()
    names = {id(pred): name for name, pred in program.named_predictors()}
    with dspy.context(trace=[]):
        prediction = program(**inputs)
        trace = list(dspy.settings.trace)
    return prediction, [(names.get(id(pred), "?"), dict(ins), _as_dict(out))
                        for pred, ins, out in trace]


def as_dspy_demos(demos: Sequence[Any]) -> list[Any]:
    """``demos`` as ``dspy.Example`` objects (their fields and inputs kept)."""
    dspy = require_dspy()
    out = []
    for demo in demos:
        if isinstance(demo, dspy.Example):
            out.append(demo)
            continue
        values = _as_dict(demo)
        example = dspy.Example(**values)
        try:
            keys = list(demo.inputs().keys())
        except Exception:
            keys = []
        keys = [k for k in keys if k in values and k != "augmented"]
        out.append(example.with_inputs(*keys) if keys else example)
    return out
