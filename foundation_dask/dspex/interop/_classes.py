"""Any process: the DSPy classes of the bridge, for small models (importing this imports DSPy).

:class:`CompletionAdapter` is a ``dspy.Adapter`` that sends the LM the plain-text prompt
of :class:`foundation_dask.dspex.CompletionAdapter` (instructions, each demo as
``Field: value`` lines, the inputs, then the prefix of the output field) and reads the
first line of the completion. Very small models (SmolLM2-135M) follow it where DSPy's
chat prompt leaves them failing to parse most answers.

:class:`DSPyLM` is a ``dspy.BaseLM`` that calls a DSPEx LM (:class:`~foundation_dask.
dspex.LocalLM`, :class:`~foundation_dask.dspex.OpenAICompatibleLM`...): prompts reach
the model as they are written. (``dspy.LM(..., model_type="text")`` appends
``"BEGIN RESPONSE:"`` to every prompt, which a completion-style prompt cannot survive.)
It pickles as the DSPEx LM does, so it travels to the workers; the DSPEx LM records its
own ``lm`` spans (tokens, cache hits) inside a trace.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import dspy

from foundation_dask.dspex.adapters import CompletionAdapter as _DSPExCompletionAdapter
from foundation_dask.dspex.signatures import make_signature

__all__ = ["CompletionAdapter", "DSPyLM"]


class CompletionAdapter(dspy.Adapter):
    """DSPEx's completion prompt for a DSPy signature with one output field.

    ::

        <instructions>

        Review: <demo review>
        Sentiment: <demo label>

        Review: <the input>
        Sentiment:

    Generation stops at the end of the line; the value is the completion stripped,
    without the output prefix if the model repeated it. An empty completion gives an
    empty value rather than an error.
    """

    def __init__(self) -> None:
        super().__init__()
        self._ours = _DSPExCompletionAdapter()

    @staticmethod
    def _output(signature: type[dspy.Signature]) -> tuple[str, Any]:
        outputs = list(signature.output_fields.items())
        if len(outputs) != 1:
            raise ValueError(f"CompletionAdapter supports one output field, not "
                             f"{list(signature.output_fields)}")
        return outputs[0]

    def format(self, signature: type[dspy.Signature], demos: list[Any],
               inputs: dict[str, Any]) -> str:
        """The prompt, ending with the output field's prefix."""
        self._output(signature)
        ours = make_signature(f"{', '.join(signature.input_fields)} -> "
                              f"{', '.join(signature.output_fields)}", signature.instructions)
        return self._ours.format(ours, demos, inputs)

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        """The output field from the first line of the completion."""
        name, output = self._output(signature)
        line = completion.split("\n", 1)[0].strip()
        prefix = (output.json_schema_extra or {}).get("prefix") or f"{name.capitalize()}:"
        if line.lower().startswith(prefix.lower()):
            line = line[len(prefix):].strip()
        return {name: line}

    def __call__(self, lm: dspy.BaseLM, lm_kwargs: dict[str, Any],
                 signature: type[dspy.Signature], demos: list[Any],
                 inputs: dict[str, Any]) -> list[dict[str, Any]]:
        prompt = self.format(signature, demos, inputs)
        outputs = lm(prompt, **{**lm_kwargs, "stop": ["\n"]})
        return [self.parse(signature, o["text"] if isinstance(o, dict) else o or "")
                for o in outputs]

    async def acall(self, lm: dspy.BaseLM, lm_kwargs: dict[str, Any],
                    signature: type[dspy.Signature], demos: list[Any],
                    inputs: dict[str, Any]) -> list[dict[str, Any]]:
        return self(lm, lm_kwargs, signature, demos, inputs)

    def __repr__(self) -> str:
        return "CompletionAdapter()"


class DSPyLM(dspy.BaseLM):
    """A DSPEx LM as a DSPy LM (``dspy.configure(lm=DSPyLM(dspex.LocalLM()))``).

    Parameters
    ----------
    lm
        The DSPEx LM (any :class:`foundation_dask.dspex.BaseLM`).
    model_type
        ``"text"`` (prompts to the completion endpoint; chat messages are flattened by
        the DSPEx LM) or ``"chat"``.
    **kwargs
        Default generation arguments (``temperature``, ``max_tokens``...), as for
        ``dspy.LM``.
    """

    #: The DSPEx LM records each call as an ``lm`` span (LMSpanCallback leaves it alone).
    records_spans = True

    def __init__(self, lm: Any, *, model_type: str = "text", **kwargs: Any):
        kwargs.setdefault("temperature", lm.kwargs.get("temperature", 0.0))
        kwargs.setdefault("max_tokens", lm.kwargs.get("max_tokens", 256))
        super().__init__(f"dspex/{lm.model}", model_type=model_type, cache=False, **kwargs)
        self.lm = lm

    def forward(self, prompt: str | None = None, messages: list[dict] | None = None,
                **kwargs: Any) -> dict[str, Any]:
        """The DSPEx LM's completion(s), as an OpenAI-style response."""
        options = {k: v for k, v in {**self.kwargs, **kwargs}.items()
                   if k not in ("rollout_id", "num_retries", "cache")}
        if prompt is not None:
            response = self.lm.generate(prompt=prompt, **options)
        else:
            response = self.lm.generate(messages=messages, **options)
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion",
            "created": int(time.time()), "model": response.model or self.lm.model,
            "choices": [{"text": text, "index": i, "finish_reason": "stop",
                         "logprobs": None} for i, text in enumerate(response.outputs)],
            "usage": {"prompt_tokens": response.prompt_tokens,
                      "completion_tokens": response.completion_tokens,
                      "total_tokens": response.prompt_tokens + response.completion_tokens},
        }

    def dump_state(self) -> dict[str, Any]:
        return {**super().dump_state(), "lm": self.lm.dump_state()}

    @classmethod
    def load_state(cls, state: dict[str, Any], **kwargs: Any) -> DSPyLM:
        from foundation_dask.dspex.lm.base import lm_from_state

        state = dict(state)
        lm = lm_from_state(state.pop("lm", None))
        if lm is None:
            raise TypeError(f"the DSPEx LM of {state.get('model')!r} cannot be rebuilt")
        state.pop("_dspy_lm_class", None)
        for key in ("model", "cache", "num_retries"):
            state.pop(key, None)
        return cls(lm, **state)

    def __repr__(self) -> str:
        return f"DSPyLM({self.lm!r})"
