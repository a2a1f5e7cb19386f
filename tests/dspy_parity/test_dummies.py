# Ported from stanfordnlp/dspy dspy/utils/dummies.py: the three modes of DummyLM its
# docstring describes (DSPy has no test module of its own for DummyLM).
# ruff: noqa: E501  (DSPy's lines kept as they are)
from foundation_dask import dspex as dspy
from foundation_dask.dspex import DummyLM


def test_dummy_lm_list_of_answers_in_order():
    lm = DummyLM([{"answer": "red"}, {"answer": "blue"}])
    dspy.configure(lm=lm)
    predictor = dspy.Predict("question -> answer")
    assert predictor(question="What color is the sky?").answer == "red"
    assert predictor(question="What color is the sky?").answer == "blue"


def test_dummy_lm_dict_of_answers_by_prompt_content():
    lm = DummyLM({"What color is the sky?": {"answer": "blue"}, "What color is grass?": {"answer": "green"}})
    dspy.configure(lm=lm)
    predictor = dspy.Predict("question -> answer")
    assert predictor(question="What color is grass?").answer == "green"
    assert predictor(question="What color is the sky?").answer == "blue"


def test_dummy_lm_follow_examples():
    lm = DummyLM([{"output": "red"}], follow_examples=True)
    dspy.configure(lm=lm)
    predictor = dspy.Predict("input -> output")
    demos = [dspy.Example(input="What color is the sky?", output="blue")]
    assert predictor(input="What color is the sky?", demos=demos).output == "blue"


def test_dummy_lm_follow_examples_with_chat_adapter():
    lm = DummyLM([{"output": "red"}], follow_examples=True)
    dspy.configure(lm=lm, adapter=dspy.ChatAdapter())
    predictor = dspy.Predict("input -> output")
    demos = [dspy.Example(input="What color is the sky?", output="blue")]
    assert predictor(input="What color is the sky?", demos=demos).output == "blue"


def test_dummy_lm_answers_with_several_fields():
    lm = DummyLM([{"answer": "2", "reasoning": "one plus one"}])
    dspy.configure(lm=lm)
    result = dspy.ChainOfThought("question -> answer")(question="What is 1+1?")
    assert (result.reasoning, result.answer) == ("one plus one", "2")
    assert lm.calls == 1  # every field in one completion
