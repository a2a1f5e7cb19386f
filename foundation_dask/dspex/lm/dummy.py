"""Any process: :class:`DummyLM`, a deterministic LM for tests and examples.

It answers from a list, a dict or a function, written the way the adapters read
answers, and pickles with its answers, so it runs in the client's process as well as
on Dask workers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from foundation_dask.dspex.fields import default_prefix
from foundation_dask.dspex.lm.base import BaseLM, messages_text
from foundation_dask.errors import LMError

__all__ = ["DummyLM"]


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _apply_stop(text: str, stop: list[str] | None) -> str:
    cut = len(text)
    for s in stop or ():
        i = text.find(s)
        if s and i != -1:
            cut = min(cut, i)
    return text[:cut]


class DummyLM(BaseLM):
    """A deterministic LM for tests.

    Parameters
    ----------
    answers
        * a list of dicts ``{field: value}`` (or raw strings), returned in order, one
          per call;
        * a callable ``f(prompt) -> str`` (chat messages are passed flattened to text);
        * a dict ``{substring: answer}``: the answer of the first substring found in the
          current request (the last block of a prompt, the last user message), else
          anywhere in the prompt.

    follow_examples
        When a demo in the prompt has the same inputs as the current request, answer
        with that demo's outputs (instead of the next answer), as DSPy's ``DummyLM``.

    Dict answers are written the way the adapters read them: ``[[ ## field ## ]]``
    sections for chat messages; for prompts, the value of the field whose prefix ends
    the prompt, then ``Prefix: value`` lines for the other fields. Stop sequences
    are honoured. Calls are not cached unless ``cache=True``.
    """

    def __init__(self, answers: list[Any] | dict[str, Any] | Callable[[str], str],
                 follow_examples: bool = False, *, model: str = "dummy", cache: bool = False,
                 **kwargs: Any):
        if not (isinstance(answers, (list, tuple, dict)) or callable(answers)):
            raise TypeError("DummyLM answers must be a list, a dict or a callable")
        super().__init__(model, cache=cache, **kwargs)
        self.answers = list(answers) if isinstance(answers, tuple) else answers
        self.follow_examples = bool(follow_examples)
        self._index = 0

    @staticmethod
    def _from_examples(prompt: str | None, messages: list[dict[str, Any]] | None) -> str:
        """The outputs of the demo whose inputs are the current request's ('' if none)."""
        if prompt is not None:
            blocks = prompt.rstrip("\n").split("\n\n")
            lines = blocks[-1].split("\n")
            inputs, label = lines[:-1], lines[-1].strip()
            for block in reversed(blocks[:-1]):
                demo = block.split("\n")
                rest = demo[len(inputs):]
                if demo[:len(inputs)] == inputs and rest and rest[0].startswith(label):
                    return "\n".join([rest[0][len(label):], *rest[1:]])
            return ""
        turns = messages or []
        final = str(turns[-1].get("content", "")) if turns else ""
        for i in range(len(turns) - 2, 0, -1):
            user, reply = turns[i - 1], turns[i]
            if (user.get("role") == "user" and reply.get("role") == "assistant"
                    and final.startswith(str(user.get("content")))):
                return str(reply.get("content", ""))
        return ""

    def _next(self, prompt: str | None, messages: list[dict[str, Any]] | None) -> Any:
        text = prompt if prompt is not None else messages_text(messages or [])
        if callable(self.answers) and not isinstance(self.answers, (list, dict)):
            return self.answers(text)
        if isinstance(self.answers, dict):
            if prompt is not None:
                current = prompt.rstrip().rsplit("\n\n", 1)[-1]
            else:
                users = [m for m in messages or [] if m.get("role") == "user"]
                current = str(users[-1]["content"]) if users else text
            for area in (current, text):
                for key, answer in self.answers.items():
                    if key in area:
                        return answer
            raise LMError(f"DummyLM: none of the keys {list(self.answers)} is in the prompt")
        with self._lock:
            if self._index >= len(self.answers):
                raise LMError(f"DummyLM has no answers left (it was given {len(self.answers)})")
            answer = self.answers[self._index]
            self._index += 1
        return answer

    @staticmethod
    def _render(answer: dict[str, Any], prompt: str | None) -> str:
        keys = list(answer)
        if prompt is None:
            body = "\n\n".join(f"[[ ## {k} ## ]]\n{_value_text(answer[k])}" for k in keys)
            return body + "\n\n[[ ## completed ## ]]"
        tail = prompt.rstrip("\n").rsplit("\n", 1)[-1].strip()
        if not tail.endswith(":"):
            return "\n".join(f"{default_prefix(k)} {_value_text(answer[k])}" for k in keys)
        label = tail[:-1].strip().lower()
        start = 0
        for i, k in enumerate(keys):
            if label in (k.lower(), default_prefix(k)[:-1].lower()):
                start = i
                break
        text = " " + _value_text(answer[keys[start]])
        return text + "".join(f"\n{default_prefix(k)} {_value_text(answer[k])}"
                              for k in keys if k != keys[start])

    def _generate(self, prompt: str | None, messages: list[dict[str, Any]] | None,
                  kwargs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        n = int(kwargs.get("n", 1) or 1)
        outputs = []
        for _ in range(n):
            if self.follow_examples:
                outputs.append(_apply_stop(self._from_examples(prompt, messages),
                                           kwargs.get("stop")))
                continue
            answer = self._next(prompt, messages)
            text = self._render(answer, prompt) if isinstance(answer, dict) else str(answer)
            outputs.append(_apply_stop(text, kwargs.get("stop")))
        request = prompt if prompt is not None else messages_text(messages or [])
        usage = {"prompt_tokens": len(request.split()),
                 "completion_tokens": sum(len(o.split()) for o in outputs)}
        return outputs, usage
