# Ported from stanfordnlp/dspy tests/predict/test_chain_of_thought.py
# (the two tests on native reasoning mock litellm responses: left out, see __init__.py)
import asyncio

from foundation_dask import dspex as dspy
from foundation_dask.dspex import ChainOfThought, DummyLM


def test_initialization_with_string_signature():
    lm = DummyLM([{"reasoning": "find the number after 1", "answer": "2"}])
    dspy.configure(lm=lm)
    predict = ChainOfThought("question -> answer")
    assert list(predict.predict.signature.output_fields.keys()) == [
        "reasoning",
        "answer",
    ]
    assert predict(question="What is 1+1?").answer == "2"


def test_async_chain_of_thought():
    # Adjusted: run with asyncio.run (no pytest-asyncio here).
    async def main():
        lm = DummyLM([{"reasoning": "find the number after 1", "answer": "2"}])
        with dspy.context(lm=lm):
            program = ChainOfThought("question -> answer")
            result = await program.acall(question="What is 1+1?")
            assert result.answer == "2"

    asyncio.run(main())
