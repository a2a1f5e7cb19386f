"""Any process: predictors, :class:`Predict` (one LM call per signature) and
:class:`ChainOfThought`.

A program runs where it is called: in the client's process, or in a Dask worker's when
it is shipped there (an evaluation, an optimizer's teacher runs), under the settings in
effect where that work was started. A predictor's LM is, in DSPy's order, the ``lm=``
of the call, then ``predictor.lm``, then ``dspex.settings.lm``.
"""

from __future__ import annotations

import logging
import types
import typing
from typing import Any, Literal, Union

from foundation_dask.dspex.adapters import CompletionAdapter
from foundation_dask.dspex.fields import NO_DEFAULT, Field, OutputField
from foundation_dask.dspex.lm.base import BaseLM, lm_from_state
from foundation_dask.dspex.primitives import Example, Module, Parameter, Prediction
from foundation_dask.dspex.settings import settings
from foundation_dask.dspex.signatures import Signature, SignatureMeta, ensure_signature
from foundation_dask.errors import LMConfigurationError, ProgramCallError, StateMismatchError

__all__ = ["ChainOfThought", "Predict", "serialize_object"]

logger = logging.getLogger(__name__)

_DEFAULT_ADAPTER = CompletionAdapter()
_CONTROL_KWARGS = ("demos", "config", "lm", "signature")


def serialize_object(obj: Any) -> Any:
    """``obj`` made JSON-able: pydantic models (and :class:`History`) dumped, containers
    converted item by item, other values as they are."""
    if hasattr(obj, "model_dump") and not isinstance(obj, type):
        try:
            return obj.model_dump(mode="json")
        except TypeError:
            return obj.model_dump()
    if isinstance(obj, Example):
        return {k: serialize_object(v) for k, v in obj.toDict().items()}
    if isinstance(obj, list):
        return [serialize_object(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(serialize_object(item) for item in obj)
    if isinstance(obj, dict):
        return {key: serialize_object(value) for key, value in obj.items()}
    return obj


def _demo_state(demo: Any, json_mode: bool = True) -> dict[str, Any]:
    values = demo.toDict() if isinstance(demo, Example) else dict(demo)
    state = {k: serialize_object(v) for k, v in values.items()} if json_mode else values
    keys = demo.input_keys if isinstance(demo, Example) else None
    state["_input_keys"] = list(keys) if keys is not None else None
    return state


def type_label(tp: Any) -> str:
    """``list[int]``, ``tuple[int, ...]``, ``Literal['a', 'b']``, ``Query`` (DSPy's names)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is None:
        return getattr(tp, "__name__", str(tp))
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if args:
        inner = ", ".join("..." if a is ... else type_label(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(origin, "__name__", str(origin))


def value_matches(value: Any, expected: Any) -> bool:
    """Whether ``value`` fits the type ``expected`` (containers checked item by item)."""
    if expected is Any or isinstance(expected, str):
        return True
    if expected is str and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return True  # a list of texts for a text field
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is Union or origin is types.UnionType:
        return any(value_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin in (list, set, frozenset):
        return isinstance(value, origin) and (not args or all(value_matches(v, args[0])
                                                              for v in value))
    if origin is dict:
        return isinstance(value, dict) and (not args or all(
            value_matches(k, args[0]) and value_matches(v, args[1]) for k, v in value.items()))
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(value_matches(v, args[0]) for v in value)
        return not args or (len(value) == len(args)
                            and all(value_matches(v, a) for v, a in zip(value, args, strict=True)))
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True


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

    def __init__(self, signature: Any, callbacks: list[Any] | None = None, **config: Any):
        super().__init__(callbacks=callbacks)
        self.signature = signature
        self.config: dict[str, Any] = dict(config)
        self.lm: Any = None
        self.demos: list[Any] = []
        self.traces: list[Any] = []
        self.train: list[Any] = []

    @property
    def signature(self) -> type[Signature]:
        """The signature (assigning a string or dict builds one)."""
        return self._signature

    @signature.setter
    def signature(self, value: Any) -> None:
        self._signature = ensure_signature(value)

    def reset(self) -> None:
        """Forget the demos, traces and the LM set on the predictor (as DSPy does;
        :meth:`Module.reset_copy` keeps the LMs)."""
        self.lm = None
        self.traces = []
        self.train = []
        self.demos = []

    def update_config(self, **kwargs: Any) -> None:
        """Add or change LM keyword arguments used for every call."""
        self.config = {**self.config, **kwargs}

    def get_config(self) -> dict[str, Any]:
        """The LM keyword arguments used for every call."""
        return self.config

    # -- calling -----------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Prediction:
        if args:
            names = list(self.signature.input_fields) or ["input"]
            raise ProgramCallError(
                f"Positional arguments are not allowed when calling `dspex.{type(self).__name__}`"
                ", must use keyword arguments that match your signature input fields: "
                f"'{', '.join(names)}'. For example: `predict({names[0]}=input_value, ...)`."
            )
        return super().__call__(**kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> Prediction:
        """``await predictor.acall(question=...)``: the call, off the event loop."""
        if args:
            return self(*args)  # raises the positional-arguments error
        return await super().acall(**kwargs)

    def _pop_controls(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        fields = self.signature.input_fields
        return {k: kwargs.pop(k) for k in _CONTROL_KWARGS if k in kwargs and k not in fields}

    def _check_inputs(self, signature: SignatureMeta, kwargs: dict[str, Any]) -> None:
        for name, field in signature.input_fields.items():
            if name not in kwargs and field.default is not NO_DEFAULT:
                kwargs[name] = field.default
        if settings.get("warn_on_type_mismatch", True):
            for name, field in signature.input_fields.items():
                value = kwargs.get(name)
                if (value is not None and field.typed
                        and not value_matches(value, field.annotation)):
                    logger.warning("Type mismatch for field '%s': expected %s based on given "
                                   "Signature, but the provided value is incompatible: %.200r.",
                                   name, type_label(field.annotation), value)
        missing = [k for k, f in signature.input_fields.items()
                   if k not in kwargs and not f.is_optional]
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
            raise LMConfigurationError(
                f"No LM is loaded for {self!r}: call dspex.configure(lm=...) (e.g. "
                "dspex.configure(lm=dspex.LocalLM())), use 'with dspex.context(lm=...)', or "
                "set predictor.lm"
            )
        if isinstance(lm, str):
            raise LMConfigurationError(
                "LM must be an instance of `dspex.BaseLM`, not a string. Instead of "
                f"'dspex.configure(lm=\"{lm}\")', configure an LM object, e.g. "
                f"'dspex.configure(lm=dspex.LM(\"{lm}\"))'")
        if not isinstance(lm, BaseLM) and (isinstance(lm, (types.FunctionType, types.MethodType))
                                           or not callable(lm)):
            raise LMConfigurationError(f"LM must be an instance of `dspex.BaseLM`, not "
                                       f"{type(lm)}. Received `lm={lm!r}`.")
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
        limit = settings.get("max_trace_size")
        if trace is not None and (limit is None or limit > 0):
            if limit is not None:
                del trace[: max(0, len(trace) - limit + 1)]
            trace.append((self, dict(kwargs), prediction))
        return prediction

    # -- state -------------------------------------------------------------------------
    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        """DSPy's layout (``traces``, ``train``, ``demos``, ``signature``: instructions and
        field prefixes/descriptions, ``lm``), plus ``signature_spec`` (field names and
        types, to rebuild the signature) and each demo's ``_input_keys``."""
        return {
            "traces": [],
            "train": [],
            "demos": [_demo_state(d, json_mode) for d in self.demos],
            "signature": self.signature.dump_state(),
            "signature_spec": self.signature.dump_spec(),
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
            saved = dict(state["signature"])
            spec = state.get("signature_spec")
            if spec is not None:
                names = [f["name"] for f in spec.get("fields", [])]
                if sorted(names) != sorted(self.signature.fields):
                    raise StateMismatchError(
                        f"saved signature fields {sorted(names)} do not match "
                        f"{self.signature.__name__}'s fields {sorted(self.signature.fields)}")
                saved["fields"] = [{**f, **s} for f, s in
                                   zip(spec["fields"], saved.get("fields", []), strict=False)]
            self.signature = self.signature.load_state(saved)
        self.demos = [_demo_from_state(d) if isinstance(d, dict) else d
                      for d in state.get("demos", [])]
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
                 rationale_field_type: Any = str, callbacks: list[Any] | None = None,
                 **config: Any):
        super().__init__(callbacks=callbacks)
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
