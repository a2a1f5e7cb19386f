"""Any process: the fields of signatures, their type annotations, and signature strings.

:func:`InputField` / :func:`OutputField` declare the fields of a signature class (a
:class:`Field` each); :func:`parse_type` reads a type annotation such as
``list[str]`` or ``Literal['yes', 'no']`` without evaluating anything; and
:func:`parse_signature_string` turns ``"context, question -> answer: int"`` into
bound fields. The signature classes built from them are in
:mod:`foundation_dask.dspex.signatures`.
"""

from __future__ import annotations

import ast
import re
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, Optional, Union

__all__ = [
    "Field",
    "InputField",
    "OutputField",
    "by_name",
    "canonical_type",
    "default_prefix",
    "infer_prefix",
    "parse_signature_string",
    "parse_type",
    "type_name",
]

_KINDS = ("input", "output")


def infer_prefix(attribute_name: str) -> str:
    """A readable label from a field name, as DSPy writes it.

    ``camelCaseText`` -> ``'Camel Case Text'``, ``snake_case_text`` -> ``'Snake Case
    Text'``, ``text2number`` -> ``'Text 2 Number'``, ``HTMLParser`` -> ``'HTML Parser'``.
    """
    s1 = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", attribute_name)
    snake = re.sub("([a-z0-9])([A-Z])", r"\1_\2", s1)
    snake = re.sub(r"([a-zA-Z])(\d)", r"\1_\2", snake)
    snake = re.sub(r"(\d)([a-zA-Z])", r"\1_\2", snake)
    words = [w for w in snake.split("_") if w]
    return " ".join(w if w.isupper() else w.capitalize() for w in words)


def default_prefix(name: str) -> str:
    """``movie_review`` / ``movieReview`` -> ``'Movie Review:'`` (:func:`infer_prefix`)."""
    return infer_prefix(name) + ":"


#: Field constraints (pydantic's names) and how they are described to the LM.
CONSTRAINTS = {
    "gt": "greater than: ",
    "ge": "greater than or equal to: ",
    "lt": "less than: ",
    "le": "less than or equal to: ",
    "min_length": "minimum length: ",
    "max_length": "maximum length: ",
    "multiple_of": "a multiple of the given number: ",
    "allow_inf_nan": "allow 'inf', '-inf', 'nan' values: ",
}

#: ``Field.default`` when the field has no default value.
NO_DEFAULT: Any = type("NoDefault", (), {"__repr__": lambda self: "NO_DEFAULT",
                                         "__reduce__": lambda self: "NO_DEFAULT"})()


def canonical_type(tp: Any) -> Any:
    """``tp`` with every ``X | Y`` written ``Union[X, Y]`` (for comparisons)."""
    args = typing.get_args(tp)
    if not args or isinstance(tp, str):
        return tp
    origin = typing.get_origin(tp)
    try:
        new = tuple(canonical_type(a) for a in args)
        if origin is Union or origin is types.UnionType:
            return Union[new]  # noqa: UP007
        if isinstance(tp, types.GenericAlias):
            return types.GenericAlias(origin, new)
        return tp.copy_with(new)
    except Exception:
        return tp


def type_name(tp: Any) -> str:
    """A short readable name of a type annotation (``str``, ``list[str]``, ``Literal['a']``)."""
    if tp is None or tp is type(None):
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    if isinstance(tp, str):
        return tp
    return repr(tp).replace("typing.", "")


class Field:
    """An input or output field of a signature.

    Create with :func:`InputField` / :func:`OutputField`; the signature binds the name and
    the type annotation.

    Attributes
    ----------
    name
        Field name (set when the signature is built).
    kind
        ``"input"`` or ``"output"``.
    annotation
        The declared type (``str`` when none was given).
    desc
        Description shown to the LM.
    prefix
        Label in completion prompts; defaults to the title-cased name with a colon
        (``movie_review`` -> ``Movie Review:``).
    multiline
        Whether values may span several lines (completion prompts then do not stop
        generating at the end of the line).
    """

    def __init__(self, kind: str, *, desc: str | None = None, prefix: str | None = None,
                 multiline: bool = False, name: str | None = None,
                 annotation: Any = str, default: Any = NO_DEFAULT, typed: bool = True,
                 **extra: Any):
        if kind not in _KINDS:
            raise ValueError(f"field kind must be 'input' or 'output', not {kind!r}")
        if desc is not None and not isinstance(desc, str):
            raise TypeError(f"desc must be a string, not {type(desc).__name__}")
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, not {type(prefix).__name__}")
        self.kind = kind
        self.desc = desc or ""
        self._prefix = prefix or None
        self.multiline = bool(multiline)
        self.name = name
        self.annotation = annotation
        self.default = default
        self.typed = bool(typed)  # False: no type was declared (str assumed)
        self.extra = dict(extra)

    @property
    def prefix(self) -> str:
        """The label in completion prompts (given, or derived from the name)."""
        if self._prefix:
            return self._prefix
        return default_prefix(self.name) if self.name else ""

    @property
    def is_input(self) -> bool:
        """Whether this is an input field."""
        return self.kind == "input"

    @property
    def constraints(self) -> str:
        """The constraints given (``min_length=5``...) described for the LM, or ``""``."""
        return ", ".join(f"{text}{self.extra[key]}" for key, text in CONSTRAINTS.items()
                         if key in self.extra)

    @property
    def is_optional(self) -> bool:
        """Whether a value may be left out: a default is set or the type admits None."""
        if self.default is not NO_DEFAULT:
            return True
        origin = typing.get_origin(self.annotation)
        return ((origin is Union or origin is types.UnionType)
                and type(None) in typing.get_args(self.annotation))

    @property
    def json_schema_extra(self) -> dict[str, Any]:
        """DSPy's view of the field's metadata (``desc`` is ``${name}`` when none was given)."""
        out = {"__dspy_field_type": self.kind,
               "desc": self.desc or (f"${{{self.name}}}" if self.name else ""),
               "prefix": self.prefix, **self.extra}
        if self.constraints:
            out["constraints"] = self.constraints
        return out

    def copy(self, **changes: Any) -> Field:
        """A copy with some attributes changed (``desc``, ``prefix``, ``annotation``...)."""
        state = {"desc": self.desc, "prefix": self._prefix, "multiline": self.multiline,
                 "name": self.name, "annotation": self.annotation, "default": self.default,
                 "typed": self.typed, **self.extra}
        state.update(changes)
        kind = state.pop("kind", self.kind)
        return Field(kind, **state)

    def _key(self) -> tuple:
        return (self.name, self.kind, type_name(canonical_type(self.annotation)), self.desc,
                self.prefix, self.multiline, repr(self.default),
                tuple(sorted((k, repr(v)) for k, v in self.extra.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Field):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        parts = [f"{self.name or '?'}: {type_name(self.annotation)}", self.kind]
        if self.desc:
            parts.append(f"desc={self.desc!r}")
        if self._prefix:
            parts.append(f"prefix={self._prefix!r}")
        if self.multiline:
            parts.append("multiline=True")
        return f"Field({', '.join(parts)})"


def InputField(*, desc: str | None = None, prefix: str | None = None,
               multiline: bool = False, default: Any = NO_DEFAULT, **extra: Any) -> Any:
    """Declare an input field of a signature.

    Parameters
    ----------
    desc
        What the field holds, shown to the LM (``description=`` is read as well).
    prefix
        Label in completion prompts (default: the title-cased field name and a colon).
    multiline
        Values may span several lines.
    default
        The value used when a call leaves the field out.
    **extra
        Free-form metadata kept on the field; pydantic's constraints (``min_length``,
        ``ge``...) are also described to the LM (:attr:`Field.constraints`).
    """
    if desc is None and isinstance(extra.get("description"), str):
        desc = extra.pop("description")
    return Field("input", desc=desc, prefix=prefix, multiline=multiline, default=default,
                 **extra)


def OutputField(*, desc: str | None = None, prefix: str | None = None,
                multiline: bool = False, **extra: Any) -> Any:
    """Declare an output field of a signature (same parameters as :func:`InputField`)."""
    if desc is None and isinstance(extra.get("description"), str):
        desc = extra.pop("description")
    return Field("output", desc=desc, prefix=prefix, multiline=multiline, **extra)


def by_name(fields: Iterable[Field]) -> dict[str, Field]:
    """``{name: field}`` of bound fields, in order (the fields of a signature are bound)."""
    return {f.name: f for f in fields if f.name is not None}


# ---------------------------------------------------------------------------------------
# type annotations from strings, without eval

_TYPE_NAMES: dict[str, Any] = {
    "str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict,
    "tuple": tuple, "set": set, "bytes": bytes, "Any": Any, "Literal": Literal,
    "Optional": Optional, "Union": Union, "List": list, "Dict": dict, "Tuple": tuple,
    "Set": set, "None": type(None),
}


def parse_type(text: str, custom_types: dict[str, Any] | None = None) -> Any:
    """Parse a type annotation such as ``list[str]`` or ``Literal['yes', 'no']``.

    Only builtin container types, ``typing`` constructs and ``custom_types`` are
    recognised; nothing is evaluated.
    """
    names = {**_TYPE_NAMES, **(custom_types or {})}
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse the type {text!r}: {exc.msg}") from None

    def build(node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(
                    f"unknown type {node.id!r} in {text!r}; known: {', '.join(sorted(names))} "
                    f"(pass custom_types={{{node.id!r}: ...}} for others)"
                )
            return names[node.id]
        if isinstance(node, ast.Attribute):
            base = build(node.value)
            try:
                return getattr(base, node.attr)
            except AttributeError:
                raise ValueError(f"unknown type {ast.unparse(node)!r} in {text!r}") from None
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(build(e) for e in node.elts)
        if isinstance(node, ast.Subscript):
            base = build(node.value)
            args = build(node.slice)
            try:
                return base[args]
            except TypeError as exc:
                raise ValueError(f"invalid type {text!r}: {exc}") from None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return Union[build(node.left), build(node.right)]  # noqa: UP007
        raise ValueError(f"unsupported syntax in type {text!r}: {ast.unparse(node)!r}")

    return build(tree.body)


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    depth, quote = 0, None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf))
    return parts


def _parse_side(text: str, kind: str, spec: str,
                custom_types: dict[str, Any] | None) -> list[Field]:
    fields: list[Field] = []
    stripped = text.strip()
    if not stripped:
        return fields
    for item in _split_top_level(stripped):
        item = item.strip()
        if not item:
            raise ValueError(f"invalid signature {spec!r}: empty field name in {text.strip()!r}")
        name, _, tp = item.partition(":")
        name = name.strip()
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(
                f"invalid signature {spec!r}: {name!r} is not a valid field name "
                "(use identifiers such as 'question' or 'context')"
            )
        try:
            annotation = parse_type(tp, custom_types) if tp.strip() else str
        except ValueError as exc:
            raise ValueError(f"invalid signature {spec!r}: {exc}") from None
        fields.append(Field(kind, name=name, annotation=annotation, typed=bool(tp.strip())))
    return fields


def parse_signature_string(spec: str, custom_types: dict[str, Any] | None = None
                           ) -> list[Field]:
    """``"context, question -> answer: int"`` -> list of bound :class:`Field`."""
    if not isinstance(spec, str):
        raise TypeError(f"a signature string is expected, not {type(spec).__name__}")
    if spec.count("->") != 1:
        raise ValueError(
            f"invalid signature {spec!r}: expected exactly one '->' between inputs and "
            "outputs, e.g. 'question -> answer' or 'context, question -> answer: int'"
        )
    left, right = spec.split("->")
    fields = _parse_side(left, "input", spec, custom_types)
    outputs = _parse_side(right, "output", spec, custom_types)
    if not outputs:
        raise ValueError(f"invalid signature {spec!r}: at least one output field is needed")
    fields += outputs
    seen: set[str | None] = set()
    for f in fields:
        if f.name in seen:
            raise ValueError(f"invalid signature {spec!r}: field {f.name!r} appears twice; "
                             "input and output fields must have distinct names")
        seen.add(f.name)
    return fields
