"""Any process: adapters, (signature, demos, inputs) -> prompt and LM text -> output
fields.

:class:`CompletionAdapter` (the default) writes a plain-text few-shot prompt, which small
completion models follow well::

    Classify the sentiment of a movie review.

    Review: I loved it.
    Sentiment: positive

    Review: A waste of time.
    Sentiment: negative

    Review: Great acting!
    Sentiment:

:class:`ChatAdapter` writes chat messages with ``[[ ## field ## ]]`` section headers, for
chat models.
"""

from __future__ import annotations

import ast
import datetime
import enum
import functools
import json
import re
import types
import typing
from typing import Any, Literal, Union

from foundation_dask.dspex.callbacks import run_with_callbacks, with_callbacks
from foundation_dask.dspex.fields import Field, default_prefix, type_name
from foundation_dask.dspex.signatures import SignatureMeta
from foundation_dask.errors import AdapterParseError  # noqa: F401  (re-exported)

__all__ = [
    "Adapter",
    "AdapterParseError",
    "ChatAdapter",
    "CompletionAdapter",
    "coerce_value",
    "format_value",
]


# ---------------------------------------------------------------------------------------
# values


def format_value(value: Any) -> str:
    """Render a field value for a prompt (strings as they are, containers as JSON)."""
    if isinstance(value, str):
        return value
    if isinstance(value, enum.Enum):
        return format_value(value.value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if hasattr(value, "toDict"):
        value = value.toDict()
    elif hasattr(value, "model_dump") and not isinstance(value, type):
        try:
            value = value.model_dump(mode="json")  # pydantic models
        except TypeError:
            value = value.model_dump()
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value, ensure_ascii=False)
        except TypeError:
            return str(value)
    return str(value)


_TRUE = {"true", "yes", "y", "1", "correct"}
_FALSE = {"false", "no", "n", "0", "incorrect"}


def _clean_scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"`":
        text = text[1:-1].strip()
    return text.rstrip(".").strip()


def _coerce(tp: Any, text: str) -> Any:
    origin = typing.get_origin(tp)
    if tp in (str, Any) or tp is None or isinstance(tp, str):
        return text
    if origin is Literal:
        options = typing.get_args(tp)
        cleaned = _clean_scalar(text)
        for option in options:
            if str(option) == cleaned:
                return option
        for option in options:
            if str(option).lower() == cleaned.lower():
                return option
        raise ValueError(f"expected one of {list(options)}, got {text!r}")
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if type(None) in args and _clean_scalar(text).lower() in ("", "none", "null"):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, text)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors) or f"cannot read {text!r} as {type_name(tp)}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _coerce_enum(tp, text)
    if isinstance(tp, type) and issubclass(tp, (datetime.date, datetime.time)):
        try:
            return tp.fromisoformat(_clean_scalar(text))
        except ValueError:
            raise ValueError(f"expected an ISO {tp.__name__}, got {text!r}") from None
    if isinstance(tp, type) and hasattr(tp, "model_validate_json"):
        try:
            return tp.model_validate_json(text.strip())  # pydantic models
        except Exception as exc:
            raise ValueError(f"expected {tp.__name__} as JSON: {exc}") from None
    if tp is bool:
        word = _clean_scalar(text).lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if tp is int:
        cleaned = _clean_scalar(text).replace(",", "")
        try:
            return int(cleaned)
        except ValueError:
            try:
                number = float(cleaned)
            except ValueError:
                raise ValueError(f"expected an integer, got {text!r}") from None
            if number.is_integer():
                return int(number)
            raise ValueError(f"expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(_clean_scalar(text).replace(",", ""))
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    container = origin or tp
    if container in (list, dict, tuple, set):
        raw = text.strip()
        try:
            value = json.loads(raw)
        except ValueError:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise ValueError(f"expected {type_name(tp)} as JSON, got {text!r}") from None
        if container in (tuple, set) and isinstance(value, list):
            value = container(value)
        if not isinstance(value, container):
            raise ValueError(f"expected {type_name(tp)}, got {type(value).__name__}: {text!r}")
        return value
    return text


def _coerce_enum(tp: type[enum.Enum], text: str) -> enum.Enum:
    """An Enum member by value, else by name (DSPy's order), else case-insensitively."""
    cleaned = _clean_scalar(text)
    if cleaned.startswith(f"{tp.__name__}."):
        cleaned = cleaned[len(tp.__name__) + 1:]
    for member in tp:
        if str(member.value) == cleaned:
            return member
    for member in tp:
        if member.name == cleaned:
            return member
    for member in tp:
        if cleaned.lower() in (str(member.value).lower(), member.name.lower()):
            return member
    raise ValueError(f"expected one of {[m.value for m in tp]}, got {text!r}")


def coerce_value(field: Field, text: str) -> Any:
    """Convert the text of an output field to the field's type; ``ValueError`` if invalid.

    ``str`` (and unknown types) stay text; ``bool``, ``int``, ``float``, ``Literal[...]``,
    ``Optional[...]`` and JSON containers (``list[str]``, ``dict``...) are converted.
    """
    text = text.strip()
    try:
        return _coerce(field.annotation, text)
    except ValueError:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1:
            return _coerce(field.annotation, lines[0])
        raise


def _type_hint(field: Field) -> str:
    tp = field.annotation
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of: " + "; ".join(str(o) for o in typing.get_args(tp))
    if tp is bool:
        return "True or False"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if (origin or tp) in (list, dict, tuple, set):
        return f"JSON for {type_name(tp)}"
    return ""


# ---------------------------------------------------------------------------------------


class Adapter:
    """Base class: ``adapter(lm, lm_kwargs, signature, demos, inputs) -> [outputs dict]``."""

    def __call__(self, lm: Any, lm_kwargs: dict[str, Any], signature: SignatureMeta,
                 demos: list[Any], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def format(self, signature: SignatureMeta, demos: list[Any], inputs: dict[str, Any]) -> Any:
        """The prompt (a string) or the chat messages (a list of dicts)."""
        raise NotImplementedError

    def parse(self, signature: SignatureMeta, completion: str) -> dict[str, Any]:
        """Output fields from the LM's text."""
        raise NotImplementedError

    def _typed(self, signature: SignatureMeta, values: dict[str, str], raw: str
               ) -> dict[str, Any]:
        out = {}
        for name, field in signature.output_fields.items():
            try:
                out[name] = coerce_value(field, values[name])
            except ValueError as exc:
                raise AdapterParseError(
                    f"output field {name!r} ({type_name(field.annotation)}): {exc}",
                    adapter=type(self).__name__, signature=signature, raw=raw, parsed=out,
                ) from None
        return out

    @staticmethod
    def _first_success(results: list[Any]) -> list[dict[str, Any]]:
        good = [r for r in results if not isinstance(r, Exception)]
        if not good:
            raise results[0]
        return good

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _demo_values(demo: Any) -> dict[str, Any]:
    if hasattr(demo, "toDict"):
        return demo.toDict()
    return dict(demo)


def _labels(name: str, field: Field) -> list[str]:
    labels = [field.prefix, default_prefix(name), f"{name}:"]
    seen: set[str] = set()
    out: list[str] = []
    for label in labels:
        key = label.lower()
        if label and key not in seen:
            seen.add(key)
            out.append(label)
    return out


def _match_label(line: str, fields: dict[str, Field]) -> tuple[str, str] | None:
    """``(field name, rest of the line)`` when ``line`` opens with a field's label."""
    stripped = line.lstrip()
    lowered = stripped.lower()
    for name, field in fields.items():
        for label in _labels(name, field):
            if lowered.startswith(label.lower()):
                return name, stripped[len(label):]
    return None


def _merge_stop(user: Any, ours: list[str]) -> list[str]:
    if user is None:
        return list(ours)
    extra = [user] if isinstance(user, str) else list(user)
    return list(dict.fromkeys([*ours, *extra]))


class CompletionAdapter(Adapter):
    """Plain-text few-shot prompts for completion models (the default adapter).

    The prompt is the instructions, then each demo as ``Prefix value`` lines (one per
    field present in the demo), demos separated by blank lines, then the inputs and the
    first output field's prefix. The LM continues from there. With one single-line
    output field generation stops at the end of the line; with several output fields
    the LM writes ``Prefix value`` lines for the next ones and stops at a blank line, and
    fields it left out are generated one by one by continuing the prompt.

    Parameters
    ----------
    describe_fields
        Add a line per field with its description and expected type after the
        instructions (off by default: small models follow demos better without).
    """

    def __init__(self, describe_fields: bool = False):
        self.describe_fields = describe_fields

    # -- prompt --------------------------------------------------------------------------
    @staticmethod
    def _line(field: Field, value: Any) -> str:
        return f"{field.prefix} {format_value(value)}"

    def _field_descriptions(self, signature: SignatureMeta) -> str:
        lines = []
        for field in signature.fields.values():
            notes = [n for n in (field.desc, _type_hint(field)) if n]
            kind = "input" if field.is_input else "output"
            suffix = f" {'; '.join(notes)}" if notes else ""
            lines.append(f"- {field.prefix.rstrip(':')} ({kind}){':' if notes else ''}{suffix}")
        return "\n".join(lines)

    def format_demo(self, signature: SignatureMeta, demo: Any) -> str | None:
        """One demo as ``Prefix value`` lines, or None when it has no output value."""
        values = _demo_values(demo)
        outputs = [n for n in signature.output_fields if values.get(n) is not None]
        if not outputs:
            return None
        return "\n".join(self._line(f, values[name]) for name, f in signature.fields.items()
                         if values.get(name) is not None)

    @with_callbacks
    def format(self, signature: SignatureMeta, demos: list[Any], inputs: dict[str, Any]) -> str:
        """The completion prompt, ending with the first output field's prefix."""
        blocks = [signature.instructions.strip()]
        if self.describe_fields:
            blocks.append(self._field_descriptions(signature))
        for demo in demos:
            block = self.format_demo(signature, demo)
            if block:
                blocks.append(block)
        first = next(iter(signature.output_fields.values()))
        current = [self._line(f, inputs[name]) for name, f in signature.input_fields.items()
                   if name in inputs]
        current.append(first.prefix)
        blocks.append("\n".join(current))
        return "\n\n".join(b for b in blocks if b)

    @staticmethod
    def _stop_for(signature: SignatureMeta, field: Field) -> list[str]:
        outputs = list(signature.output_fields.values())
        if field is outputs[-1] and not field.multiline:
            return ["\n"]
        return ["\n\n"]

    # -- parsing -------------------------------------------------------------------------
    def _parse_from(self, signature: SignatureMeta, text: str, start: str
                    ) -> dict[str, str]:
        """Field texts from a completion that continues after the prefix of ``start``."""
        outputs = signature.output_fields
        inputs = signature.input_fields
        current = start
        sections: dict[str, list[str]] = {start: []}
        for i, line in enumerate(text.split("\n")):
            if i == 0:
                echoed = _match_label(line, {start: outputs[start]})
                if echoed is not None:  # the LM repeated the prefix
                    line = echoed[1]
                sections[current].append(line)
                continue
            pending = {n: f for n, f in outputs.items() if n not in sections}
            hit = _match_label(line, pending)
            if hit is not None:
                current = hit[0]
                sections[current] = [hit[1]]
                continue
            if inputs and _match_label(line, inputs) is not None:
                break  # the LM started a new example
            sections[current].append(line)
        values = {}
        for name, lines in sections.items():
            field = outputs[name]
            if field.multiline:
                value = "\n".join(lines).strip()
            else:
                value = next((ln.strip() for ln in lines if ln.strip()), "")
            if value:
                values[name] = value
        return values

    def parse(self, signature: SignatureMeta, completion: str) -> dict[str, Any]:
        """Output fields from the text the LM wrote after the first output prefix."""
        first = next(iter(signature.output_fields))
        values = self._parse_from(signature, completion, first)
        missing = [n for n in signature.output_fields if n not in values]
        if missing:
            raise AdapterParseError(
                f"missing output field(s) {missing}", adapter=type(self).__name__,
                signature=signature, raw=completion, missing=missing, parsed=values,
            )
        return self._typed(signature, values, completion)

    # -- calling -------------------------------------------------------------------------
    def __call__(self, lm: Any, lm_kwargs: dict[str, Any], signature: SignatureMeta,
                 demos: list[Any], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        prompt = self.format(signature, demos, inputs)
        kwargs = dict(lm_kwargs)
        user_stop = kwargs.pop("stop", None)
        outputs = list(signature.output_fields.values())
        texts = lm(prompt=prompt, stop=_merge_stop(user_stop, self._stop_for(signature,
                                                                             outputs[0])),
                   **kwargs)
        kwargs.pop("n", None)
        results: list[Any] = []
        for text in texts:
            try:  # each completion read (and completed) as one "parse" for callbacks
                results.append(run_with_callbacks(
                    self, "parse",
                    functools.partial(self._complete, lm, kwargs, user_stop, signature,
                                      prompt, text),
                    {"signature": signature, "completion": text}))
            except AdapterParseError as exc:
                results.append(exc)
        return self._first_success(results)

    def _complete(self, lm: Any, kwargs: dict[str, Any], user_stop: Any,
                  signature: SignatureMeta, prompt: str, text: str) -> dict[str, Any]:
        outputs = signature.output_fields
        first = next(iter(outputs))
        values = self._parse_from(signature, text, first)
        raw = text
        for _ in range(len(outputs)):
            missing = [n for n in outputs if n not in values]
            if not missing:
                break
            nxt = missing[0]
            if nxt == first:
                break  # continuing would repeat the same prompt
            lines = []
            for n, f in outputs.items():
                if n == nxt:
                    break
                if n in values:
                    lines.append(self._line(f, values[n]))
            head = prompt[: len(prompt) - len(outputs[first].prefix)]
            cont_prompt = head + "\n".join([*lines, outputs[nxt].prefix])
            more = lm(prompt=cont_prompt, stop=_merge_stop(user_stop, self._stop_for(
                signature, outputs[nxt])), **kwargs)[0]
            raw += f"\n[continued at {outputs[nxt].prefix!r}]" + more
            new = self._parse_from(signature, more, nxt)
            if nxt not in new:
                break
            for name, value in new.items():
                values.setdefault(name, value)
        missing_names = [n for n in outputs if n not in values]
        if missing_names:
            raise AdapterParseError(
                f"missing output field(s) {missing_names}", adapter=type(self).__name__,
                signature=signature, raw=raw, missing=missing_names, parsed=values,
            )
        return self._typed(signature, values, raw)


# ---------------------------------------------------------------------------------------

_COMPLETED = "[[ ## completed ## ]]"


def _header(name: str) -> str:
    return f"[[ ## {name} ## ]]"


class ChatAdapter(Adapter):
    """Chat messages with ``[[ ## field ## ]]`` section headers, for chat models.

    The system message holds the instructions, the fields with their descriptions and
    the reply structure; each demo is a user turn (inputs) and an assistant turn
    (outputs, ending with ``[[ ## completed ## ]]``); the last user turn holds the inputs.
    """

    def _system(self, signature: SignatureMeta) -> str:
        def describe(fields: dict[str, Field]) -> list[str]:
            lines = []
            for i, field in enumerate(fields.values(), 1):
                notes = [n for n in (field.desc, _type_hint(field), field.constraints) if n]
                text = f"{i}. `{field.name}` ({type_name(field.annotation)})"
                lines.append(text + (f": {'. '.join(notes)}" if notes else ""))
            return lines

        structure = "\n\n".join(f"{_header(n)}\n{{{n}}}" for n in signature.output_fields)
        parts = [
            signature.instructions.strip(),
            "\n".join(["Input fields:", *describe(signature.input_fields)])
            if signature.input_fields else "",
            "\n".join(["Output fields:", *describe(signature.output_fields)]),
            "Reply with the output fields in this order, each under its header line, and "
            f"end with {_COMPLETED}:\n\n{structure}\n\n{_COMPLETED}",
        ]
        return "\n\n".join(p for p in parts if p)

    @staticmethod
    def _sections(names: list[str], values: dict[str, Any]) -> str:
        return "\n\n".join(f"{_header(n)}\n{format_value(values[n])}" for n in names
                           if values.get(n) is not None)

    @with_callbacks
    def format(self, signature: SignatureMeta, demos: list[Any], inputs: dict[str, Any]
               ) -> list[dict[str, str]]:
        """Chat messages: system, (user, assistant) per demo, user."""
        messages = [{"role": "system", "content": self._system(signature)}]
        in_names, out_names = list(signature.input_fields), list(signature.output_fields)
        for demo in demos:
            values = _demo_values(demo)
            if not any(values.get(n) is not None for n in out_names):
                continue
            messages.append({"role": "user", "content": self._sections(in_names, values)})
            messages.append({"role": "assistant",
                             "content": self._sections(out_names, values) + f"\n\n{_COMPLETED}"})
        order = ", then ".join(f"`{_header(n)}`" for n in out_names)
        user = self._sections(in_names, inputs)
        request = f"Respond with {order}, then `{_COMPLETED}`."
        messages.append({"role": "user", "content": f"{user}\n\n{request}" if user else request})
        return messages

    @with_callbacks
    def parse(self, signature: SignatureMeta, completion: str) -> dict[str, Any]:
        """Output fields from ``[[ ## name ## ]]`` sections (a lone field may be bare)."""
        parts = re.split(r"\[\[ ## (\w+) ## \]\]", completion)
        sections: dict[str, str] = {}
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in signature.output_fields and name not in sections:
                sections[name] = body.strip()
        outputs = list(signature.output_fields)
        if not sections and len(outputs) == 1 and len(parts) == 1 and completion.strip():
            sections[outputs[0]] = completion.strip()
        missing = [n for n in outputs if not sections.get(n)]
        if missing:
            raise AdapterParseError(
                f"missing output field(s) {missing} (expected sections "
                f"{', '.join(_header(n) for n in missing)})", adapter=type(self).__name__,
                signature=signature, raw=completion, missing=missing, parsed=sections,
            )
        return self._typed(signature, sections, completion)

    def __call__(self, lm: Any, lm_kwargs: dict[str, Any], signature: SignatureMeta,
                 demos: list[Any], inputs: dict[str, Any]) -> list[dict[str, Any]]:
        messages = self.format(signature, demos, inputs)
        texts = lm(messages=messages, **lm_kwargs)
        results: list[Any] = []
        for text in texts:
            try:
                results.append(self.parse(signature, text))
            except AdapterParseError as exc:
                results.append(exc)
        return self._first_success(results)
