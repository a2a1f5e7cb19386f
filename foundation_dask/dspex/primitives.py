"""Any process: examples, predictions and the program base class (:class:`Module`).

All of them pickle, so programs and data go to Dask workers with the tasks that use
them; programs save to and load from JSON files.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from foundation_dask._html import html_repr
from foundation_dask.dspex.signatures import signature_from_state

__all__ = ["Completions", "Example", "Module", "Parameter", "Prediction", "load_program"]

STATE_FORMAT = "foundation_dask.dspex/1"


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
            self._store.update(dict(base))
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
        """The fields marked as inputs by :meth:`with_inputs` (None when never marked)."""
        return self._input_keys

    def with_inputs(self, *keys: str) -> Example:
        """A copy with ``keys`` marked as the inputs."""
        for k in keys:
            if not isinstance(k, str):
                raise TypeError(f"with_inputs takes field names, got {k!r}")
        new = self.copy()
        object.__setattr__(new, "_input_keys", tuple(dict.fromkeys(keys)))
        return new

    def inputs(self) -> Example:
        """An Example holding only the input fields."""
        if self._input_keys is None:
            raise ValueError(
                "inputs() needs to know which fields are inputs: build the example with "
                ".with_inputs('question', ...)"
            )
        new = type(self).__new__(type(self))
        Example.__init__(new, {k: self._store[k] for k in self._input_keys if k in self._store})
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
            if isinstance(value, list):
                return [convert(v) for v in value]
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            return value

        return {k: convert(v) for k, v in self._store.items()}

    to_dict = toDict

    # -- comparison / display ----------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Example):
            return NotImplemented
        return self._store == other._store

    def __hash__(self) -> int:
        return hash(_freeze(self._store))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_short(v)}" for k, v in self.items())
        marks = f", input_keys={list(self._input_keys)}" if self._input_keys is not None else ""
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


class Parameter:
    """Marker base class of learnable program parts (predictors)."""


# ---------------------------------------------------------------------------------------


def _read_state(path: str | os.PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    if not isinstance(state, dict):
        raise ValueError(f"{os.fspath(path)} does not hold a saved program (a JSON object)")
    return state


class _ClassOrInstanceMethod:
    """``obj.load(path)`` loads into ``obj``; ``Cls.load(path, ...)`` builds a new one."""

    def __init__(self, instance_func: Callable, class_func: Any):
        self.instance_func = instance_func
        self.class_func = class_func
        self.__doc__ = instance_func.__doc__

    def __get__(self, obj: Any, objtype: type | None = None) -> Callable:
        if obj is None:
            return self.class_func.__get__(None, objtype)
        return self.instance_func.__get__(obj, objtype)


class Module:
    """Base class of programs.

    Subclasses create their predictors in ``__init__`` and implement ``forward(**kw)``
    returning a :class:`Prediction`; calling the module calls ``forward``.

    Examples
    --------
    >>> class QA(Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         from foundation_dask.dspex import Predict
    ...         self.answer = Predict("question -> answer")
    ...     def forward(self, question):
    ...         return self.answer(question=question)
    >>> [name for name, _ in QA().named_predictors()]
    ['answer']
    """

    def __init__(self) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} must define forward(...) returning a Prediction"
        )

    # -- structure ---------------------------------------------------------------------
    def named_predictors(self) -> list[tuple[str, Any]]:
        """``[(name, predictor)]`` for every predictor reachable from this module.

        Names follow attribute paths: ``"answer"``, ``"cot.predict"``, ``"steps[0]"``;
        a predictor on its own is named ``"self"``.
        """
        if isinstance(self, Parameter):
            return [("self", self)]
        out: list[tuple[str, Any]] = []
        seen: set[int] = {id(self)}

        def visit(value: Any, name: str) -> None:
            if id(value) in seen:
                return
            if isinstance(value, Parameter):
                seen.add(id(value))
                out.append((name, value))
            elif isinstance(value, Module):
                seen.add(id(value))
                for key, sub in vars(value).items():
                    visit(sub, f"{name}.{key}")
            elif isinstance(value, (list, tuple)):
                for i, sub in enumerate(value):
                    visit(sub, f"{name}[{i}]")
            elif isinstance(value, dict):
                for key, sub in value.items():
                    visit(sub, f"{name}[{key!r}]")

        for key, value in vars(self).items():
            visit(value, key)
        return out

    def predictors(self) -> list[Any]:
        """The predictors of :meth:`named_predictors`, without names."""
        return [p for _, p in self.named_predictors()]

    def map_named_predictors(self, func: Callable[[Any], Any]) -> Module:
        """Replace every predictor ``p`` by ``func(p)`` (in place); returns self."""
        for name, predictor in self.named_predictors():
            if name == "self":
                raise TypeError("map_named_predictors applies to modules holding predictors")
            _set_path(self, name, func(predictor))
        return self

    def set_lm(self, lm: Any) -> None:
        """Use ``lm`` for every predictor of this program."""
        for predictor in self.predictors():
            predictor.lm = lm

    def get_lm(self) -> Any:
        """The LM shared by all predictors (error if they differ)."""
        lms = {id(p.lm): p.lm for p in self.predictors()}
        if len(lms) != 1:
            raise ValueError(f"the predictors of {type(self).__name__} use {len(lms)} "
                             "different LMs (or none): read predictor.lm individually")
        return next(iter(lms.values()))

    # -- copies ------------------------------------------------------------------------
    def deepcopy(self) -> Module:
        """A deep copy; LMs (and other objects that cannot be copied) are shared."""
        memo: dict[int, Any] = {}
        for predictor in self.predictors():
            lm = getattr(predictor, "lm", None)
            if lm is not None:
                memo[id(lm)] = lm
        try:
            return copy.deepcopy(self, memo)
        except Exception:
            new = copy.copy(self)
            for key, value in vars(self).items():
                if isinstance(value, Module):
                    new.__dict__[key] = value.deepcopy()
                else:
                    try:
                        new.__dict__[key] = copy.deepcopy(value, memo)
                    except Exception:
                        new.__dict__[key] = value
            return new

    def reset_copy(self) -> Module:
        """A deep copy with every predictor reset (no demos). LMs set on predictors stay."""
        new = self.deepcopy()
        for predictor in new.predictors():
            predictor.reset()
        return new

    # -- state -------------------------------------------------------------------------
    def dump_state(self) -> dict[str, Any]:
        """``{predictor name: predictor state}``, JSON-able."""
        return {name: p.dump_state() for name, p in self.named_predictors()}

    def load_state(self, state: dict[str, Any]) -> Module:
        """Restore :meth:`dump_state` output (in place); returns self."""
        state = {k: v for k, v in state.items() if k != "metadata"}
        mine = dict(self.named_predictors())
        missing = sorted(set(mine) - set(state))
        extra = sorted(set(state) - set(mine))
        if missing or extra:
            raise ValueError(
                f"saved state does not match {type(self).__name__}: predictors missing from "
                f"the state {missing}, unknown predictors in the state {extra}"
            )
        for name, predictor in mine.items():
            predictor.load_state(state[name])
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the state (instructions, field descriptions, demos, LM) as JSON."""
        from foundation_dask import __version__

        state = {"metadata": {"format": STATE_FORMAT, "foundation_dask": __version__,
                              "program": type(self).__name__},
                 **self.dump_state()}
        try:
            text = json.dumps(state, indent=2, ensure_ascii=False)
        except TypeError as exc:
            raise TypeError(f"cannot save {type(self).__name__} as JSON: {exc} (demos must "
                            "hold JSON values: str, numbers, bools, lists, dicts)") from None
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".dspex-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _load_into(self, path: str | os.PathLike) -> Module:
        """Read a file written by :meth:`save` into this program (in place); returns self.

        Called on a class instead (``MyProgram.load(path, *args)``), builds
        ``MyProgram(*args)`` first; ``Predict.load(path)`` rebuilds the signature from
        the file.
        """
        return self.load_state(_read_state(path))

    @classmethod
    def _load_new(cls, path: str | os.PathLike, *args: Any, **kwargs: Any) -> Module:
        state = _read_state(path)
        program: Module
        if issubclass(cls, Parameter) and not args and not kwargs and "signature" in state:
            predictor: Any = cls  # a predictor class, built from its signature
            program = predictor(signature_from_state(state["signature"]))
        else:
            try:
                program = cls(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{cls.__name__}.load(path, ...) needs the arguments that "
                                f"build a {cls.__name__}: {exc}") from None
        return program.load_state(state)

    load = _ClassOrInstanceMethod(_load_into, _load_new)

    def __repr__(self) -> str:
        lines = [f"  {name} = {p!r}" for name, p in self.named_predictors()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)" if lines \
            else f"{type(self).__name__}()"


def _set_path(root: Any, path: str, value: Any) -> None:
    import re

    tokens = re.findall(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[('.*?'|\".*?\")\]", path)
    obj = root
    steps: list[tuple[str, Any]] = []
    for attr, index, key in tokens:
        if attr:
            steps.append(("attr", attr))
        elif index:
            steps.append(("item", int(index)))
        else:
            steps.append(("item", key[1:-1]))
    for kind, k in steps[:-1]:
        obj = getattr(obj, k) if kind == "attr" else obj[k]
    kind, k = steps[-1]
    if kind == "attr":
        setattr(obj, k, value)
    else:
        obj[k] = value


def load_program(path: str | os.PathLike, program: Any) -> Module:
    """Load saved state into ``program`` (an instance), or build one (a class) and load it.

    ``load_program(path, MyProgram)`` calls ``MyProgram()``; ``load_program(path,
    dspex.Predict)`` rebuilds the predictor's signature from the file.

    Returns the program.
    """
    if isinstance(program, type) and issubclass(program, Module):
        return program.load(path)
    if not isinstance(program, Module):
        raise TypeError(f"load_program needs a dspex Module, got {type(program).__name__}")
    return program.load(path)
