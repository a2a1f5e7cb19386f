"""Any process: examples and predictions, the data of DSPEx programs.

:class:`Example` (named fields, some marked as inputs), :class:`Prediction` (a
predictor's outputs, with all its :class:`Completions`) and :class:`History` (earlier
turns of a conversation, an input field type). All of them pickle, so they travel to
Dask workers with the tasks that use them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

from foundation_dask._html import html_repr

__all__ = ["Completions", "Example", "History", "InputKeys", "Prediction"]


class InputKeys(frozenset):
    """The input field names of an :class:`Example`: a set that remembers its order."""

    order: tuple[str, ...]

    def __new__(cls, keys: Iterable[str] = ()) -> InputKeys:
        ordered = tuple(dict.fromkeys(keys))
        new = super().__new__(cls, ordered)
        new.order = ordered
        return new

    def __repr__(self) -> str:
        return repr(set(self.order)) if self.order else "set()"


class History:
    """Earlier turns of a conversation, as an input field: ``History(messages=[{field:
    value, ...}, ...])``, one dict of a signature's fields per turn (DSPy's
    ``dspy.History``).

    Examples
    --------
    >>> History(messages=[{"question": "2+2?", "answer": "4"}]).model_dump()
    {'messages': [{'question': '2+2?', 'answer': '4'}]}
    """

    messages: list[dict[str, Any]]

    def __init__(self, messages: list[dict[str, Any]]):
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise TypeError("History(messages=...) takes a list of dicts")
        object.__setattr__(self, "messages", [dict(m) for m in messages])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a History is immutable; make a new one")

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        """``{"messages": [...]}``, JSON-able when the messages are."""
        return {"messages": [dict(m) for m in self.messages]}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self.messages == other.messages

    def __hash__(self) -> int:
        return hash(repr(self.messages))

    def __repr__(self) -> str:
        return f"History(messages={self.messages!r})"


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set)):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Example:
    """A data point: named fields, some of them marked as inputs.

    ``Example(question="2+2?", answer="4").with_inputs("question")``. Fields are read
    as attributes or items; ``inputs()`` and ``labels()`` split them.

    Parameters
    ----------
    base
        Another :class:`Example` (copied, with its input keys) or a mapping.
    **kwargs
        Fields.
    """

    def __init__(self, base: Example | dict[str, Any] | None = None, **kwargs: Any):
        object.__setattr__(self, "_store", {})
        object.__setattr__(self, "_input_keys", None)
        if isinstance(base, Example):
            self._store.update(base._store)
            object.__setattr__(self, "_input_keys", base._input_keys)
        elif base is not None:
            self._store.update(base.model_dump() if hasattr(base, "model_dump") else dict(base))
        self._store.update(kwargs)

    # -- field access ------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_store", "_input_keys", "_completions"):
            raise AttributeError(name)
        store = self.__dict__.get("_store", {})
        if name in store:
            return store[name]
        raise AttributeError(
            f"{type(self).__name__} has no field {name!r}; fields: {list(store)}"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            self._store[name] = value

    def __delattr__(self, name: str) -> None:
        if name in self._store:
            del self._store[name]
        else:
            object.__delattr__(self, name)

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._store[key] = value

    def __delitem__(self, key: str) -> None:
        del self._store[key]

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len([k for k in self._store if not str(k).startswith("dspy_")])

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self, include_dspy: bool = False) -> list[str]:
        """Field names (``dspy_*`` bookkeeping fields only with ``include_dspy``)."""
        return [k for k in self._store if include_dspy or not str(k).startswith("dspy_")]

    def values(self, include_dspy: bool = False) -> list[Any]:
        """Field values, in :meth:`keys` order."""
        return [self._store[k] for k in self.keys(include_dspy)]

    def items(self, include_dspy: bool = False) -> list[tuple[str, Any]]:
        """``(name, value)`` pairs, in :meth:`keys` order."""
        return [(k, self._store[k]) for k in self.keys(include_dspy)]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of field ``key``, or ``default``."""
        return self._store.get(key, default)

    # -- inputs / labels ---------------------------------------------------------------
    @property
    def input_keys(self) -> tuple[str, ...] | None:
        """The fields marked as inputs by :meth:`with_inputs`, in the order given (None
        when never marked); ``_input_keys`` holds them as a set, as in DSPy."""
        return None if self._input_keys is None else self._input_keys.order

    def with_inputs(self, *keys: str) -> Example:
        """A copy with ``keys`` marked as the inputs."""
        for k in keys:
            if not isinstance(k, str):
                raise TypeError(f"with_inputs takes field names, got {k!r}")
        new = self.copy()
        object.__setattr__(new, "_input_keys", InputKeys(keys))
        return new

    def inputs(self) -> Example:
        """An Example holding only the input fields."""
        if self._input_keys is None:
            raise ValueError(
                "inputs() needs to know which fields are inputs: build the example with "
                ".with_inputs('question', ...)"
            )
        new = type(self).__new__(type(self))
        Example.__init__(new, {k: self._store[k] for k in self._input_keys.order
                               if k in self._store})
        object.__setattr__(new, "_input_keys", self._input_keys)
        return new

    def labels(self) -> Example:
        """An Example holding the non-input fields."""
        keys = set(self._input_keys or ())
        return Example({k: v for k, v in self._store.items() if k not in keys})

    # -- copies ------------------------------------------------------------------------
    def copy(self, **kwargs: Any) -> Example:
        """A shallow copy, with ``kwargs`` fields added or replaced."""
        new = type(self).__new__(type(self))
        for k, v in self.__dict__.items():
            object.__setattr__(new, k, copy.copy(v) if k == "_store" else v)
        new._store.update(kwargs)
        return new

    def without(self, *keys: str) -> Example:
        """A copy without the fields ``keys``."""
        new = self.copy()
        for k in keys:
            new._store.pop(k, None)
        return new

    def toDict(self) -> dict[str, Any]:  # noqa: N802  (DSPy's name)
        """The fields as a plain dict (nested examples converted too)."""

        def convert(value: Any) -> Any:
            if isinstance(value, Example):
                return value.toDict()
            if hasattr(value, "model_dump") and not isinstance(value, type):
                return value.model_dump()  # History, pydantic models
            if isinstance(value, list):
                return [convert(v) for v in value]
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            return value

        return {k: convert(v) for k, v in self._store.items()}

    to_dict = toDict

    # -- comparison / display ----------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        # a dict with the same fields is equal too: demos loaded from saved state compare
        # equal to the dicts they were saved from
        if isinstance(other, Example):
            return self._store == other._store
        if isinstance(other, dict):
            return self._store == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(_freeze(self._store))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_short(v)}" for k, v in self.items())
        marks = f", input_keys={list(self.input_keys)}" if self.input_keys is not None else ""
        return f"{type(self).__name__}({fields}{marks})"

    __str__ = __repr__

    def _repr_html_(self) -> str:
        inputs = set(self._input_keys or ())
        return html_repr(repr(self), type(self).__name__,
                         fields=[(f"{k} (input)" if k in inputs else k, v)
                                 for k, v in self.items()])


class Completions:
    """All completions of one prediction: ``completions.answer`` is the list of answers."""

    def __init__(self, items: list[dict[str, Any]]):
        self._items = [dict(i) for i in items]

    def __getattr__(self, name: str) -> list[Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._items and name in self._items[0]:
            return [i.get(name) for i in self._items]
        raise AttributeError(f"completions have no field {name!r}")

    def __getitem__(self, index: int) -> Prediction:
        return Prediction(**self._items[index])

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Prediction]:
        return (Prediction(**i) for i in self._items)

    def __repr__(self) -> str:
        return f"Completions({self._items!r})"


class Prediction(Example):
    """The output of a predictor: output fields as attributes; ``completions`` if several.

    Examples
    --------
    >>> Prediction(answer="4").answer
    '4'
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_completions", None)

    @classmethod
    def from_completions(cls, completions: list[dict[str, Any]],
                         signature: Any = None) -> Prediction:
        """The first completion's fields, with all of them in ``completions``."""
        if not completions:
            raise ValueError("from_completions needs at least one completion")
        pred = cls(**completions[0])
        object.__setattr__(pred, "_completions", Completions(completions))
        return pred

    @property
    def completions(self) -> Completions:
        """Every completion the LM returned (one unless ``n`` > 1 was asked for)."""
        if self.__dict__.get("_completions") is None:
            return Completions([dict(self._store)])
        return self._completions

    def __repr__(self) -> str:
        text = super().__repr__()
        n = len(self.__dict__.get("_completions") or ())
        return text if n <= 1 else f"{text[:-1]}, completions={n})"
