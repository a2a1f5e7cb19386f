"""Any process: predictors, :class:`Predict` (one LM call per signature) and
:class:`ChainOfThought`.

A program runs where it is called: in the client's process, or in a Dask worker's when
it is shipped there (an evaluation, an optimizer's teacher runs), under the settings in
effect where that work was started. A predictor's LM is, in DSPy's order, the ``lm=``
of the call, then ``predictor.lm``, then ``dspex.settings.lm``.
"""

from __future__ import annotations

from typing import Any

from foundation_dask.dspex.adapters import CompletionAdapter
from foundation_dask.dspex.fields import Field, OutputField
from foundation_dask.dspex.lm.base import lm_from_state
from foundation_dask.dspex.primitives import Example, Module, Parameter, Prediction
from foundation_dask.dspex.settings import settings
from foundation_dask.dspex.signatures import Signature, SignatureMeta, ensure_signature

__all__ = ["ChainOfThought", "Predict"]

_DEFAULT_ADAPTER = CompletionAdapter()
_CONTROL_KWARGS = ("demos", "config", "lm", "signature")


def _demo_state(demo: Any) -> dict[str, Any]:
    if isinstance(demo, Example):
        state = demo.toDict()
        state["_input_keys"] = list(demo.input_keys) if demo.input_keys is not None else None
        return state
    return {**dict(demo), "_input_keys": None}


def _demo_from_state(state: dict[str, Any]) -> Example:
    data = dict(state)
    keys = data.pop("_input_keys", None)
    example = Example(**data)
    return example.with_inputs(*keys) if keys is not None else example


def _lm_name(lm: Any) -> str:
    return getattr(lm, "model", None) or type(lm).__name__


class Predict(Module, Parameter):
    """Call an LM once to produce a signature's outputs from its inputs.

    Parameters
    ----------
    signature
        A signature class or string (``"question -> answer"``).
    **config
        LM keyword arguments for every call (``temperature=``, ``max_tokens=``, ``n=``).

    Attributes
    ----------
    signature
        The signature (a class).
    demos
        Few-shot examples (:class:`Example`) put in the prompt.
    lm
        An LM used instead of ``dspex.settings.lm`` (shipped along when the program is
        pickled to Dask workers); by default None, the configured LM.
    config
        LM keyword arguments.

    Examples
    --------
    >>> from foundation_dask import dspex
    >>> qa = dspex.Predict("question -> answer")
    >>> with dspex.context(lm=dspex.DummyLM([{"answer": "4"}])):
    ...     qa(question="2+2?").answer
    '4'
    """

    def __init__(self, signature: Any, **config: Any):
        super().__init__()
        self.signature = signature
        self.config: dict[str, Any] = dict(config)
        self.lm: Any = None
        self.demos: list[Any] = []

    @property
    def signature(self) -> type[Signature]:
        """The signature (assigning a string or dict builds one)."""
        return self._signature

    @signature.setter
    def signature(self, value: Any) -> None:
        self._signature = ensure_signature(value)

    def reset(self) -> None:
        """Forget the demos (the LM set on the predictor stays)."""
        self.demos = []

    # -- calling -----------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Prediction:
        if args:
            raise TypeError(
                f"{type(self).__name__} takes keyword arguments named after the input fields "
                f"of {self.signature.__name__}({self.signature.signature}), e.g. "
                f"{next(iter(self.signature.input_fields), 'question')}=..."
            )
        return self.forward(**kwargs)

    def _pop_controls(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        fields = self.signature.input_fields
        return {k: kwargs.pop(k) for k in _CONTROL_KWARGS if k in kwargs and k not in fields}

    def _check_inputs(self, signature: SignatureMeta, kwargs: dict[str, Any]) -> None:
        missing = [k for k in signature.input_fields if k not in kwargs]
        unknown = [k for k in kwargs if k not in signature.input_fields]
        if not missing and not unknown:
            return
        problems = []
        if missing:
            problems.append(f"missing input field(s) {', '.join(map(repr, missing))}")
        if unknown:
            problems.append(f"unknown input field(s) {', '.join(map(repr, unknown))}")
        outputs = [k for k in unknown if k in signature.output_fields]
        hint = (f" ({', '.join(map(repr, outputs))}: output field(s); pass only the inputs, "
                "e.g. prog(**example.inputs()))") if outputs else ""
        raise TypeError(f"{'; '.join(problems)} for {signature.__name__}({signature.signature})"
                        f"; inputs are {list(signature.input_fields)}{hint}")

    def _resolve_lm(self, lm: Any) -> Any:
        lm = lm if lm is not None else self.lm
        if lm is None:
            lm = settings.lm
        if lm is None:
            raise RuntimeError(
                f"no LM is configured for {self!r}: call dspex.configure(lm=...) (e.g. "
                "dspex.configure(lm=dspex.LocalLM())), use 'with dspex.context(lm=...)', or "
                "set predictor.lm"
            )
        return lm

    def forward(self, **kwargs: Any) -> Prediction:
        """Run the LM on the inputs given as keyword arguments.

        ``demos=``, ``config=`` (LM kwargs), ``lm=`` and ``signature=`` override the
        predictor's own for this call.
        """
        controls = self._pop_controls(kwargs)
        signature = ensure_signature(controls.get("signature", self.signature))
        demos = controls.get("demos", self.demos)
        config = {**self.config, **(controls.get("config") or {})}
        self._check_inputs(signature, kwargs)
        lm = self._resolve_lm(controls.get("lm"))
        adapter = settings.adapter or _DEFAULT_ADAPTER
        completions = adapter(lm, config, signature, list(demos), kwargs)
        prediction = Prediction.from_completions(completions, signature=signature)
        trace = settings.trace
        if trace is not None:
            trace.append((self, dict(kwargs), prediction))
        return prediction

    # -- state -------------------------------------------------------------------------
    def dump_state(self) -> dict[str, Any]:
        """Instructions and field descriptions, demos (inputs marked), LM."""
        return {
            "signature": self.signature.dump_state(),
            "demos": [_demo_state(d) for d in self.demos],
            "lm": self.lm.dump_state() if self.lm is not None and hasattr(self.lm, "dump_state")
            else None,
        }

    def load_state(self, state: dict[str, Any]) -> Predict:
        """Restore :meth:`dump_state` output (in place); returns self.

        A saved LM is re-created when its type can be rebuilt from its state
        (:class:`~foundation_dask.dspex.LocalLM`, OpenAI-compatible LMs); otherwise, and
        when nothing was saved, the predictor keeps its current LM.
        """
        if "signature" in state:
            self.signature = self.signature.load_state(state["signature"])
        self.demos = [_demo_from_state(d) for d in state.get("demos", [])]
        lm_state = state.get("lm")
        if lm_state is not None:
            current = self.lm.dump_state() if hasattr(self.lm, "dump_state") else None
            if current != lm_state:
                rebuilt = lm_from_state(lm_state)
                if rebuilt is not None:
                    self.lm = rebuilt
        return self

    def __repr__(self) -> str:
        sig = self.signature
        lm = f", lm={_lm_name(self.lm)!r}" if self.lm is not None else ""
        return f"{type(self).__name__}({sig.__name__}({sig.signature}), " \
               f"demos={len(self.demos)}{lm})"


class ChainOfThought(Module):
    """Predict with a ``reasoning`` output field written before the other outputs.

    Parameters
    ----------
    signature
        A signature class or string.
    rationale_field
        The reasoning field (default: ``OutputField`` with prefix ``Reasoning:``,
        multi-line).
    rationale_field_type
        Its type.
    **config
        LM keyword arguments.
    """

    def __init__(self, signature: Any, rationale_field: Field | None = None,
                 rationale_field_type: Any = str, **config: Any):
        super().__init__()
        signature = ensure_signature(signature)
        field = rationale_field or OutputField(
            desc="reason step by step towards the answer", multiline=True)
        self.predict = Predict(signature.prepend("reasoning", field, rationale_field_type),
                               **config)

    def forward(self, **kwargs: Any) -> Prediction:
        """Run the inner :class:`Predict` on the inputs."""
        return self.predict(**kwargs)

    @property
    def signature(self) -> type[Signature]:
        """The signature with the reasoning field."""
        return self.predict.signature

    @property
    def demos(self) -> list[Any]:
        """The inner predictor's demos."""
        return self.predict.demos

    @demos.setter
    def demos(self, value: list[Any]) -> None:
        self.predict.demos = value

    @property
    def lm(self) -> Any:
        """The inner predictor's LM."""
        return self.predict.lm

    @lm.setter
    def lm(self, value: Any) -> None:
        self.predict.lm = value

    def __repr__(self) -> str:
        sig = self.signature
        return f"ChainOfThought({sig.__name__}({sig.signature}), demos={len(self.demos)})"
