"""Any process: the program base class (:class:`Module`), its structure, callbacks and
saved state; the data classes (:class:`Example`, :class:`Prediction`...) are re-exported
from :mod:`~foundation_dask.dspex.examples`.

Programs pickle, so they go to Dask workers with the tasks that use them; they save to
and load from JSON files (DSPy's state format, with DSPEx's additions), pickled state
files and, with ``save_program=True``, whole pickled programs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import platform
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle

from foundation_dask.dspex.callbacks import with_callbacks
from foundation_dask.dspex.examples import Completions, Example, History, Prediction
from foundation_dask.dspex.settings import calling_module
from foundation_dask.dspex.signatures import signature_from_state
from foundation_dask.errors import StateMismatchError

__all__ = ["Completions", "Example", "History", "Module", "Parameter", "Prediction", "load",
           "load_program", "set_attribute_by_name"]

logger = logging.getLogger(__name__)

STATE_FORMAT = "foundation_dask.dspex/1"


class Parameter:
    """Marker base class of learnable program parts (predictors)."""


# ---------------------------------------------------------------------------------------


def dependency_versions() -> dict[str, str]:
    """The versions saved programs record (a mismatch on load is logged)."""
    from foundation_dask import __version__

    return {"python": ".".join(platform.python_version_tuple()[:2]),
            "foundation_dask": __version__, "cloudpickle": cloudpickle.__version__}


def _read_state(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, Any]:
    if Path(path).suffix == ".pkl":
        if not allow_pickle:
            raise ValueError("Loading .pkl files can run arbitrary code, which may be dangerous. "
                             "Prefer saving with .json files if possible. Set "
                             "`allow_pickle=True` if you are sure about the source of the file.")
        with open(path, "rb") as fb:
            state = cloudpickle.load(fb)
    else:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    if not isinstance(state, dict):
        raise ValueError(f"{os.fspath(path)} does not hold a saved program (a JSON object)")
    _check_versions((state.get("metadata") or {}).get("dependency_versions") or {})
    return state


def _check_versions(saved: dict[str, str]) -> None:
    """Log each dependency whose saved version is not the one installed here."""
    current = dependency_versions()
    for key, version in saved.items():
        if key in current and current[key] != version:
            logger.warning("There is a mismatch of %s version between saved model and current "
                           "environment: saved with %s==%s, now %s==%s.", key, key, version,
                           key, current[key])


def _write_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".dspex-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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

    #: Set on programs an optimizer returned.
    _compiled: bool = False
    #: Callbacks of this module only (:mod:`~foundation_dask.dspex.callbacks`).
    callbacks: list[Any] = []  # noqa: RUF012  (read only; instances get their own)

    def __init__(self, callbacks: list[Any] | None = None) -> None:
        self.callbacks = list(callbacks or [])
        self.history: list[dict[str, Any]] = []
        self._compiled = False

    @with_callbacks
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with calling_module(self):
            return self.forward(*args, **kwargs)

    @with_callbacks
    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """Call the module from asyncio code: ``await program.acall(question=...)``.

        Runs :meth:`aforward`, which by default runs :meth:`forward` in a worker thread
        (with the settings in effect here), so the event loop is not blocked.
        """
        with calling_module(self):
            return await self.aforward(*args, **kwargs)

    async def aforward(self, *args: Any, **kwargs: Any) -> Any:
        """The asynchronous :meth:`forward` (default: ``forward`` in a thread)."""
        return await asyncio.to_thread(self.forward, *args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} must define forward(...) returning a Prediction"
        )

    def __getstate__(self) -> dict[str, Any]:
        # the LM calls recorded stay with the process that made them
        state = dict(self.__dict__)
        if "history" in state:
            state["history"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

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

    def named_parameters(self) -> list[tuple[str, Any]]:
        """The learnable parts (predictors) with their names (:meth:`named_predictors`)."""
        return self.named_predictors()

    def parameters(self) -> list[Any]:
        """The learnable parts (predictors)."""
        return self.predictors()

    def named_sub_modules(self, type_: type | None = None, skip_compiled: bool = False
                          ) -> Iterator[tuple[str, Any]]:
        """Every module reachable from this one (itself first, as ``"self"``), breadth
        first, each once: ``("self.sub", ...)``, ``("self.items[0]", ...)``,
        ``("self.table[key]", ...)``. ``type_`` keeps only instances of that type;
        ``skip_compiled`` does not look inside compiled modules."""
        type_ = type_ or Module
        queue: deque[tuple[str, Any]] = deque([("self", self)])
        seen = {id(self)}

        def add(name: str, item: Any) -> None:
            if id(item) not in seen:
                seen.add(id(item))
                queue.append((name, item))

        while queue:
            name, item = queue.popleft()
            if isinstance(item, type_):
                yield name, item
            if isinstance(item, Module):
                if skip_compiled and getattr(item, "_compiled", False):
                    continue
                for sub_name, sub_item in vars(item).items():
                    add(f"{name}.{sub_name}", sub_item)
            elif isinstance(item, (list, tuple)):
                for i, sub_item in enumerate(item):
                    add(f"{name}[{i}]", sub_item)
            elif isinstance(item, dict):
                for key, sub_item in item.items():
                    add(f"{name}[{key}]", sub_item)

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
            lm = getattr(predictor, "lm", None)
            predictor.reset()
            predictor.lm = lm
        return new

    # -- state -------------------------------------------------------------------------
    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        """``{predictor name: predictor state}``, JSON-able (DSPy's layout)."""
        return {name: p.dump_state(json_mode=json_mode) for name, p in self.named_predictors()}

    def load_state(self, state: dict[str, Any]) -> Module:
        """Restore :meth:`dump_state` output (in place); returns self.

        All or nothing: a state that does not fit (a predictor missing from it, or
        unknown to the program: :class:`~foundation_dask.errors.StateMismatchError`, a
        ``KeyError``) leaves the program unchanged.
        """
        state = {k: v for k, v in state.items() if k != "metadata"}
        mine = dict(self.named_predictors())
        missing = sorted(set(mine) - set(state))
        extra = sorted(set(state) - set(mine))
        if missing or extra:
            raise StateMismatchError(
                f"saved state does not match {type(self).__name__}: predictors missing from "
                f"the state {missing}, unknown predictors in the state {extra}",
                missing=missing, extra=extra,
            )
        trial = {name: copy.copy(p) for name, p in mine.items()}
        for name, predictor in trial.items():  # raises before self is touched
            predictor.load_state(state[name])
        for name, predictor in mine.items():
            predictor.__dict__.update({k: v for k, v in vars(trial[name]).items()
                                       if k != "history"})
        return self

    def save(self, path: str | os.PathLike, save_program: bool = False,
             modules_to_serialize: list[Any] | None = None) -> None:
        """Write the state (instructions, field descriptions, demos, LM).

        ``path`` ending in ``.json`` (indented, human-readable) or ``.pkl`` (pickled
        state, for values JSON cannot hold). With ``save_program=True``, ``path`` is a
        directory and the whole program is pickled into ``program.pkl`` (classes of
        ``modules_to_serialize`` by value), with ``metadata.json``; read it back with
        :func:`load`.
        """
        from foundation_dask import __version__

        metadata = {"format": STATE_FORMAT, "foundation_dask": __version__,
                    "program": type(self).__name__,
                    "dependency_versions": dependency_versions()}
        target = Path(path)
        if save_program:
            if target.suffix:
                raise ValueError("`path` must point to a directory without a suffix when "
                                 f"`save_program=True`, but received: {target}")
            target.mkdir(parents=True, exist_ok=True)
            for module in modules_to_serialize or []:
                cloudpickle.register_pickle_by_value(module)
            try:
                data = cloudpickle.dumps(self)
            finally:
                for module in modules_to_serialize or []:
                    cloudpickle.unregister_pickle_by_value(module)
            _write_atomic(target / "program.pkl", data)
            _write_atomic(target / "metadata.json",
                          (json.dumps(metadata, indent=2) + "\n").encode())
            return
        if target.suffix == ".pkl":
            logger.warning("Loading untrusted .pkl files can run arbitrary code, which may be "
                           "dangerous; prefer saving as JSON (module.save('module.json')).")
            _write_atomic(target, cloudpickle.dumps(
                {"metadata": metadata, **self.dump_state(json_mode=False)}))
            return
        state = {"metadata": metadata, **self.dump_state()}
        try:
            text = json.dumps(state, indent=2, ensure_ascii=False)
        except TypeError as exc:
            raise TypeError(f"cannot save {type(self).__name__} as JSON: {exc} (demos must "
                            "hold JSON values: str, numbers, bools, lists, dicts; or save to "
                            "a .pkl path)") from None
        _write_atomic(target, (text + "\n").encode("utf-8"))

    def _load_into(self, path: str | os.PathLike, allow_pickle: bool = False) -> Module:
        """Read a file written by :meth:`save` into this program (in place); returns self.

        Called on a class instead (``MyProgram.load(path, *args)``), builds
        ``MyProgram(*args)`` first; ``Predict.load(path)`` rebuilds the signature from
        the file. ``.pkl`` files load only with ``allow_pickle=True``.
        """
        return self.load_state(_read_state(path, allow_pickle))

    @classmethod
    def _load_new(cls, path: str | os.PathLike, *args: Any, **kwargs: Any) -> Module:
        state = _read_state(path, bool(kwargs.pop("allow_pickle", False)))
        program: Module
        if issubclass(cls, Parameter) and not args and not kwargs and "signature" in state:
            predictor: Any = cls  # a predictor class, built from its signature
            program = predictor(signature_from_state(state["signature"],
                                                     spec=state.get("signature_spec")))
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


def set_attribute_by_name(obj: Any, name: str, value: Any) -> None:
    """Set the attribute or item at path ``name`` (``"sub.items[0]['key'].attr"``)."""
    _set_path(obj, name, value)


def load(path: str | os.PathLike, allow_pickle: bool = False) -> Module:
    """The whole program saved with ``program.save(directory, save_program=True)``.

    Needs ``allow_pickle=True``: unpickling can run arbitrary code.
    """
    if not allow_pickle:
        raise ValueError("Loading with pickle is not allowed by default: a saved program is "
                         "unpickled, which can run arbitrary code. Set `allow_pickle=True` if "
                         "you are sure about the source.")
    directory = Path(path)
    with open(directory / "metadata.json", encoding="utf-8") as f:
        _check_versions(json.load(f).get("dependency_versions") or {})
    with open(directory / "program.pkl", "rb") as f:
        return cloudpickle.load(f)


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
