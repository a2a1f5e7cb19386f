"""Any process: signatures, the typed input/output contract of a predictor.

A signature is a class. Declare one with fields::

    class Classify(Signature):
        \"\"\"Classify the sentiment of a movie review.\"\"\"      # -> instructions
        review: str = InputField(desc="a short movie review")
        sentiment: str = OutputField(desc="positive or negative")

or from a string: ``Signature("context, question -> answer: int", "Answer briefly.")``.
Signatures compare by name, instructions and fields (``a.equals(b)`` ignores the name),
hash consistently and pickle: classes importable by name by reference, others (made
from strings, defined in functions or notebooks) by value, with plain :mod:`pickle` as
well as :mod:`cloudpickle`. The fields and the parsing of signature strings are in
:mod:`foundation_dask.dspex.fields`.
"""

from __future__ import annotations

import copyreg
import inspect
import sys
import typing
from typing import Any

from foundation_dask.dspex.fields import (
    NO_DEFAULT,
    Field,
    InputField,
    OutputField,
    by_name,
    default_prefix,
    infer_prefix,
    parse_signature_string,
    parse_type,
    type_name,
)

__all__ = [
    "Field",
    "InputField",
    "OutputField",
    "Signature",
    "SignatureMeta",
    "default_prefix",
    "ensure_signature",
    "infer_prefix",
    "make_signature",
    "parse_signature_string",
    "parse_type",
    "signature_from_state",
    "type_name",
]


# ---------------------------------------------------------------------------------------
# the signature class


def _default_instructions(fields: dict[str, Field]) -> str:
    ins = ", ".join(f"`{n}`" for n, f in fields.items() if f.kind == "input")
    outs = ", ".join(f"`{n}`" for n, f in fields.items() if f.kind == "output")
    if ins:
        return f"Given the fields {ins}, produce the fields {outs}."
    return f"Produce the fields {outs}."


def _resolve_annotations(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """Evaluate string annotations (``from __future__ import annotations``) safely."""
    resolved = {}
    module = sys.modules.get(cls.__module__)
    globalns = vars(module) if module is not None else {}
    for name, ann in raw.items():
        if not isinstance(ann, str):
            resolved[name] = ann
            continue
        try:
            resolved[name] = parse_type(ann, {k: v for k, v in globalns.items()
                                              if not k.startswith("__")})
        except ValueError:
            try:
                resolved[name] = eval(ann, dict(globalns), {})  # noqa: S307  (user's own code)
            except Exception:
                resolved[name] = ann
    return resolved


class SignatureMeta(type):
    """Metaclass of signatures: collects fields, gives class-level properties."""

    # set on every signature class by __new__
    _fields: dict[str, Field]
    _instructions: str
    _explicit_instructions: bool

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any],
                **kwargs: Any) -> SignatureMeta:
        if "_fields" in namespace:  # built by make_signature / a transformation
            return super().__new__(mcs, name, bases, namespace, **kwargs)
        declared = {k: v for k, v in namespace.items() if isinstance(v, Field)}
        ns = {k: v for k, v in namespace.items() if k not in declared}
        cls = super().__new__(mcs, name, bases, ns, **kwargs)
        raw_ann = dict(namespace.get("__annotations__", {}))
        if not raw_ann and "__annotate__" in namespace:  # Python 3.14 lazy annotations
            raw_ann = dict(getattr(cls, "__annotations__", {}))
        annotations = _resolve_annotations(cls, raw_ann)
        for ann_name in raw_ann:
            if ann_name not in declared and not ann_name.startswith("_"):
                origin = typing.get_origin(annotations.get(ann_name))
                if origin is typing.ClassVar:
                    continue
                raise TypeError(
                    f"field {ann_name!r} of signature {name!r} must be declared with "
                    f"{ann_name}: <type> = dspex.InputField() or dspex.OutputField()"
                )
        fields: dict[str, Field] = {}
        parent_instructions, parent_explicit = "", False
        for base in reversed(bases):
            if (isinstance(base, SignatureMeta) and "_fields" in base.__dict__
                    and not base.__dict__.get("_is_base")):
                fields.update({k: v.copy() for k, v in base._fields.items()})
                if base.__dict__.get("_explicit_instructions"):
                    parent_instructions = base._instructions
                    parent_explicit = True
        for fname, field in declared.items():
            if fname.startswith("_"):
                raise ValueError(f"field names may not start with '_': {fname!r} in {name!r}")
            fields[fname] = field.copy(name=fname, annotation=annotations.get(fname, str),
                                       typed=fname in annotations)
        doc = namespace.get("__doc__")
        if doc and doc.strip():
            instructions, explicit = inspect.cleandoc(doc), True
        elif parent_explicit:
            instructions, explicit = parent_instructions, True
        else:
            instructions, explicit = _default_instructions(fields), False
        type.__setattr__(cls, "_fields", fields)
        type.__setattr__(cls, "_instructions", instructions)
        type.__setattr__(cls, "_explicit_instructions", explicit)
        return cls

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls.__dict__.get("_is_base"):
            return make_signature(*args, **kwargs)
        fields = cls._fields
        missing = [n for n, f in fields.items() if n not in kwargs and not f.is_optional]
        unknown = [k for k in kwargs if k not in fields]
        if args or missing or unknown:
            problems = "".join([f"; missing field(s) {missing}" if missing else "",
                                f"; unknown field(s) {unknown}" if unknown else ""])
            raise TypeError(
                f"{cls.__name__} is a signature class: pass it to a predictor, e.g. "
                f"dspex.Predict({cls.__name__}), or build a value of it with every field as "
                f"a keyword argument{problems}"
            )
        instance: Any = object.__new__(typing.cast(Any, cls))
        for name, field in fields.items():
            value = kwargs.get(name, None if field.default is NO_DEFAULT else field.default)
            object.__setattr__(instance, name, value)
        return instance

    # -- class-level properties ----------------------------------------------------
    @property
    def instructions(cls) -> str:
        """The task description given to the LM."""
        return cls._instructions

    @property
    def fields(cls) -> dict[str, Field]:
        """All fields, inputs then outputs, each in declaration order."""
        return {**cls.input_fields, **cls.output_fields}

    @property
    def input_fields(cls) -> dict[str, Field]:
        """The input fields, in declaration order."""
        return {k: v for k, v in cls._fields.items() if v.kind == "input"}

    @property
    def output_fields(cls) -> dict[str, Field]:
        """The output fields, in declaration order."""
        return {k: v for k, v in cls._fields.items() if v.kind == "output"}

    @property
    def signature(cls) -> str:
        """``"review -> sentiment"``."""
        return f"{', '.join(cls.input_fields)} -> {', '.join(cls.output_fields)}"

    # -- identity ------------------------------------------------------------------
    def _content_key(cls) -> tuple:
        fields = cls.__dict__.get("_fields") or {}
        return (cls.__dict__.get("_instructions"),
                tuple(f._key() for f in {**{k: v for k, v in fields.items()
                                            if v.kind == "input"},
                                         **{k: v for k, v in fields.items()
                                            if v.kind == "output"}}.values()))

    def __eq__(cls, other: object) -> bool:
        if cls is other:
            return True
        if not isinstance(other, SignatureMeta):
            return NotImplemented
        return cls.__name__ == other.__name__ and cls._content_key() == other._content_key()

    def __hash__(cls) -> int:
        return hash((cls.__name__, cls._content_key()))

    def __repr__(cls) -> str:
        if cls.__dict__.get("_is_base"):
            return "<class 'foundation_dask.dspex.Signature'>"
        instr = cls._instructions
        if len(instr) > 80:
            instr = instr[:77] + "..."
        return f"{cls.__name__}({cls.signature}, instructions={instr!r})"


class Signature(metaclass=SignatureMeta):
    """Base class of signatures; ``Signature("q -> a", "instructions")`` makes one.

    Class-level attributes: ``instructions``, ``fields`` (ordered, inputs first),
    ``input_fields``, ``output_fields``, ``signature`` (``"q -> a"``).

    Examples
    --------
    >>> sig = Signature("question -> answer")
    >>> sig
    StringSignature(question -> answer, instructions='Given the fields `question`, produce the fields `answer`.')
    >>> list(sig.output_fields)
    ['answer']
    """  # noqa: E501

    _is_base = True

    @classmethod
    def _rebuild(cls, name: str, fields: list[Field], instructions: str | None,
                 explicit: bool = True) -> type[Signature]:
        bound = by_name(fields)
        if instructions is None:
            instructions, explicit = _default_instructions(bound), False
        return _new_signature_class(name, bound, instructions, explicit)

    @classmethod
    def with_instructions(cls, instructions: str) -> type[Signature]:
        """The same signature with other instructions."""
        if not isinstance(instructions, str):
            raise TypeError("instructions must be a string")
        return cls._rebuild(cls.__name__, list(cls._fields.values()), instructions)

    @classmethod
    def append_instructions(cls, text: str) -> type[Signature]:
        """The same signature with ``text`` added after the instructions (a blank line
        between)."""
        if not isinstance(text, str):
            raise TypeError("instructions must be a string")
        return cls.with_instructions(f"{cls._instructions}\n\n{text}")

    @classmethod
    def with_updated_fields(cls, name: str, type_: Any = None, **changes: Any
                            ) -> type[Signature]:
        """The same signature with field ``name`` changed (``desc=``, ``prefix=``...)."""
        if name not in cls._fields:
            raise KeyError(f"{cls.__name__} has no field {name!r}; fields: {list(cls._fields)}")
        if type_ is not None:
            changes["annotation"] = type_
        fields = [f.copy(**changes) if f.name == name else f for f in cls._fields.values()]
        return cls._rebuild(cls.__name__, fields, cls._instructions,
                            cls._explicit_instructions)

    @classmethod
    def insert(cls, index: int, name: str, field: Field, type_: Any = None) -> type[Signature]:
        """Insert a field at ``index`` among the fields of its kind (``-1``: last)."""
        if not isinstance(field, Field):
            raise TypeError("field must be made with dspex.InputField() or dspex.OutputField()")
        if name in cls._fields:
            raise ValueError(f"{cls.__name__} already has a field {name!r}")
        new = field.copy(name=name, annotation=type_ if type_ is not None else field.annotation)
        same = [f for f in cls._fields.values() if f.kind == new.kind]
        other = [f for f in cls._fields.values() if f.kind != new.kind]
        if index < 0:
            index = len(same) + 1 + index
        same.insert(max(0, min(index, len(same))), new)
        fields = same + other if new.kind == "input" else other + same
        instructions = cls._instructions if cls._explicit_instructions else None
        return cls._rebuild(cls.__name__, fields, instructions)

    @classmethod
    def prepend(cls, name: str, field: Field, type_: Any = None) -> type[Signature]:
        """Insert a field first among the fields of its kind."""
        return cls.insert(0, name, field, type_)

    @classmethod
    def append(cls, name: str, field: Field, type_: Any = None) -> type[Signature]:
        """Insert a field last among the fields of its kind."""
        return cls.insert(-1, name, field, type_)

    @classmethod
    def delete(cls, name: str) -> type[Signature]:
        """The signature without field ``name``."""
        if name not in cls._fields:
            raise KeyError(f"{cls.__name__} has no field {name!r}")
        fields = [f for f in cls._fields.values() if f.name != name]
        instructions = cls._instructions if cls._explicit_instructions else None
        return cls._rebuild(cls.__name__, fields, instructions)

    @classmethod
    def equals(cls, other: Any) -> bool:
        """Same instructions and fields, whatever the class names."""
        return isinstance(other, SignatureMeta) and cls._content_key() == other._content_key()

    @classmethod
    def dump_state(cls) -> dict[str, Any]:
        """JSON-able instructions and each field's prefix and description, in field order
        (DSPy's format: ``{"instructions": ..., "fields": [{"prefix", "description"}]}``).

        A field without a description is written ``"${name}"``, as DSPy does.
        """
        return {
            "instructions": cls._instructions,
            "fields": [{"prefix": f.prefix, "description": f.json_schema_extra["desc"]}
                       for f in cls.fields.values()],
        }

    @classmethod
    def dump_spec(cls) -> dict[str, Any]:
        """What rebuilds the signature without its class: name, and each field's name,
        kind, type and line mode (:func:`signature_from_state`)."""
        return {"name": cls.__name__,
                "fields": [{"name": f.name, "kind": f.kind, "type": type_name(f.annotation),
                            "multiline": f.multiline} for f in cls.fields.values()]}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> type[Signature]:
        """A copy with the instructions, prefixes and descriptions of :meth:`dump_state`.

        Fields are matched by position (DSPy's format); states that name their fields
        (written by earlier versions) are matched by name, and must name the same fields.
        """
        saved_fields = list(state.get("fields", []))
        mine = cls.fields
        if saved_fields and all("name" in f for f in saved_fields):
            saved = {f["name"]: f for f in saved_fields}
            if set(saved) != set(mine):
                raise ValueError(
                    f"saved signature fields {sorted(saved)} do not match {cls.__name__}'s "
                    f"fields {sorted(mine)}"
                )
            ordered = [saved[name] for name in mine]
        else:
            ordered = saved_fields
        changes: dict[str, dict[str, Any]] = {}
        for (name, f), s in zip(mine.items(), ordered, strict=False):
            if s.get("kind", f.kind) != f.kind:
                raise ValueError(f"field {name!r} is an {f.kind} field, saved as {s['kind']}")
            desc = s.get("description", s.get("desc", f.desc))
            if desc == f"${{{name}}}":
                desc = ""
            prefix = s.get("prefix")
            changes[name] = {"desc": desc or "",
                             "prefix": None if prefix == default_prefix(name) else prefix}
        fields = [f.copy(**changes[f.name]) if f.name in changes else f
                  for f in cls._fields.values()]
        return cls._rebuild(cls.__name__, fields, state.get("instructions", cls._instructions))


def signature_from_state(state: dict[str, Any], custom_types: dict[str, Any] | None = None,
                         spec: dict[str, Any] | None = None) -> type[Signature]:
    """Build a signature from :meth:`Signature.dump_state` output and its
    :meth:`Signature.dump_spec` (``spec``; states of earlier versions hold both).

    Types are read back with :func:`parse_type` (``str`` when a type is not known).
    """
    saved = list(state.get("fields", []))
    described = list((spec or {}).get("fields", [])) or saved
    if not all("name" in f and "kind" in f for f in described):
        raise ValueError("the saved signature does not name its fields: load it into a "
                         "predictor built with the signature instead")
    fields: dict[str, Field] = {}
    for i, f in enumerate(described):
        extra = saved[i] if i < len(saved) else {}
        try:
            annotation = parse_type(f.get("type") or "str", custom_types)
        except ValueError:
            annotation = str
        prefix = extra.get("prefix", f.get("prefix"))
        desc = extra.get("description", extra.get("desc", f.get("desc")))
        if desc == f"${{{f['name']}}}":
            desc = None
        fields[f["name"]] = Field(
            f["kind"], name=f["name"], annotation=annotation, desc=desc,
            prefix=None if prefix == default_prefix(f["name"]) else prefix,
            multiline=bool(f.get("multiline", False)))
    default = _default_instructions(fields)
    instructions = state.get("instructions") or default
    name = (spec or {}).get("name") or state.get("name") or "StringSignature"
    return _new_signature_class(name, fields, instructions, instructions != default)


def _new_signature_class(name: str, fields: dict[str, Field], instructions: str,
                         explicit: bool) -> type[Signature]:
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": instructions,
        "_fields": dict(fields),
        "_instructions": instructions,
        "_explicit_instructions": explicit,
    }
    return typing.cast("type[Signature]", SignatureMeta(name, (Signature,), namespace))


def _caller_names() -> dict[str, Any]:
    """Names visible where the signature is made (the nearest frame outside DSPEx first):
    ``Signature("path: Path -> n: int")`` finds ``Path`` imported by the caller."""
    names: dict[str, Any] = {}
    frame = sys._getframe(1)
    depth = 0
    while frame is not None and depth < 30:
        module = str(frame.f_globals.get("__name__", ""))
        if not module.startswith("foundation_dask.dspex"):
            for scope in (frame.f_locals, frame.f_globals):
                for key, value in scope.items():
                    if not key.startswith("__"):
                        names.setdefault(key, value)
        frame = frame.f_back  # type: ignore[assignment]
        depth += 1
    return names


def make_signature(signature: str | dict[str, Any] | type[Signature],
                   instructions: str | None = None, signature_name: str = "StringSignature",
                   custom_types: dict[str, Any] | None = None) -> type[Signature]:
    """Build a signature from a string, a ``{name: field}`` dict, or another signature.

    Parameters
    ----------
    signature
        ``"context, question -> answer: int"``; or ``{"question": InputField(), ...}``
        (values may also be ``(type, field)``); or a signature class.
    instructions
        Task description; defaults to one naming the fields.
    signature_name
        Class name of the result.
    custom_types
        Extra type names usable in the string form.
    """
    if isinstance(signature, SignatureMeta):
        return signature.with_instructions(instructions) if instructions is not None \
            else signature
    if isinstance(signature, str):
        try:
            fields = parse_signature_string(signature, custom_types)
        except ValueError as exc:
            if "unknown type" not in str(exc):
                raise
            fields = parse_signature_string(signature, {**_caller_names(), **(custom_types or {})})
    elif isinstance(signature, dict):
        fields = []
        for name, value in signature.items():
            tp: Any = str
            if isinstance(value, tuple) and len(value) == 2:
                tp, value = value
            if not isinstance(value, Field):
                raise TypeError(f"field {name!r}: expected InputField()/OutputField(), "
                                f"got {type(value).__name__}")
            if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
                raise ValueError(f"invalid field name {name!r}")
            fields.append(value.copy(name=name, annotation=tp))
        if not any(f.kind == "output" for f in fields):
            raise ValueError("a signature needs at least one output field")
    else:
        raise TypeError(
            "Signature() takes a string such as 'question -> answer', a dict of fields or a "
            f"signature class, not {type(signature).__name__}"
        )
    if instructions is not None and not isinstance(instructions, str):
        raise TypeError("instructions must be a string")
    bound = by_name(fields)
    if instructions is None:
        return _new_signature_class(signature_name, bound, _default_instructions(bound), False)
    return _new_signature_class(signature_name, bound, instructions, True)


def ensure_signature(signature: Any, instructions: str | None = None) -> type[Signature]:
    """Accept a signature class or anything :func:`make_signature` accepts."""
    if isinstance(signature, SignatureMeta):
        if signature.__dict__.get("_is_base"):
            raise TypeError("pass a concrete signature, not the Signature base class")
        sig = typing.cast("type[Signature]", signature)
        return sig.with_instructions(instructions) if instructions else sig
    return make_signature(signature, instructions)


# ---------------------------------------------------------------------------------------
# pickling: by reference when importable by name, else by value


def _rebuild_signature(name: str, fields: list[Field], instructions: str,
                       explicit: bool) -> type[Signature]:
    return _new_signature_class(name, by_name(fields), instructions, explicit)


def _reduce_signature(cls: SignatureMeta) -> Any:
    module = sys.modules.get(cls.__module__)
    obj: Any = module
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    if obj is cls:
        return cls.__qualname__
    return (_rebuild_signature,
            (cls.__name__, list(cls._fields.values()), cls._instructions,
             cls._explicit_instructions))


copyreg.pickle(SignatureMeta, _reduce_signature)
