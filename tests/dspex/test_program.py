"""DSPEx program model: signatures, examples, predictors, adapters, modules, state, pickling."""

from __future__ import annotations

import json
import pickle
import threading
from typing import Literal

import cloudpickle
import pytest

from foundation_dask import dspex
from foundation_dask.dspex.adapters import coerce_value
from foundation_dask.dspex.signatures import Field


class Classify(dspex.Signature):
    """Classify the sentiment of a movie review."""

    review: str = dspex.InputField(desc="a short movie review")
    sentiment: str = dspex.OutputField(desc="positive or negative")


class Typed(dspex.Signature):
    """Answer with typed values."""

    question: str = dspex.InputField()
    count: int = dspex.OutputField()
    ok: bool = dspex.OutputField()
    label: Literal["yes", "no"] = dspex.OutputField(prefix="Verdict:")


class QA(dspex.Module):
    """Two predictors composed: draft an answer, then shorten it."""

    def __init__(self):
        super().__init__()
        self.draft = dspex.ChainOfThought("question -> answer")
        self.shorten = dspex.Predict("answer -> short_answer")

    def forward(self, question):
        draft = self.draft(question=question)
        return dspex.Prediction(answer=self.shorten(answer=draft.answer).short_answer,
                                reasoning=draft.reasoning)


DEMOS = [
    dspex.Example(review="I loved every minute.", sentiment="positive").with_inputs("review"),
    dspex.Example(review="A boring mess.", sentiment="negative").with_inputs("review"),
]


@pytest.fixture(autouse=True)
def clean_settings():
    dspex.settings.reset()
    yield
    dspex.settings.reset()


# -- signatures ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_class_signature_fields_instructions_and_repr():
    assert Classify.instructions == "Classify the sentiment of a movie review."
    assert list(Classify.fields) == ["review", "sentiment"]
    assert list(Classify.input_fields) == ["review"]
    assert list(Classify.output_fields) == ["sentiment"]
    field = Classify.output_fields["sentiment"]
    assert (field.desc, field.prefix, field.annotation, field.kind) == (
        "positive or negative", "Sentiment:", str, "output")
    assert field.json_schema_extra["__dspy_field_type"] == "output"
    assert Classify.signature == "review -> sentiment"
    assert repr(Classify) == (
        "Classify(review -> sentiment, instructions='Classify the sentiment of a movie review.')"
    )


@pytest.mark.timeout(30)
def test_typed_class_signature_resolves_postponed_annotations():
    assert Typed.output_fields["count"].annotation is int
    assert Typed.output_fields["ok"].annotation is bool
    assert Typed.output_fields["label"].annotation == Literal["yes", "no"]
    assert Typed.output_fields["label"].prefix == "Verdict:"


@pytest.mark.timeout(30)
def test_string_signature_types_and_instructions():
    sig = dspex.Signature("context, question -> answer: int, evidence: list[str]")
    assert list(sig.input_fields) == ["context", "question"]
    assert list(sig.output_fields) == ["answer", "evidence"]
    assert sig.output_fields["answer"].annotation is int
    assert sig.output_fields["evidence"].annotation == list[str]
    assert sig.instructions == ("Given the fields `context`, `question`, produce the fields "
                                "`answer`, `evidence`.")
    assert dspex.Signature("question -> answer", "Be brief.").instructions == "Be brief."
    lit = dspex.Signature("text -> mood: Literal['happy', 'sad']")
    assert lit.output_fields["mood"].annotation == Literal["happy", "sad"]
    assert dspex.Signature("movie_review -> sentiment").input_fields["movie_review"].prefix == \
        "Movie Review:"


@pytest.mark.parametrize("spec, message", [
    ("question answer", "exactly one '->'"),
    ("a -> b -> c", "exactly one '->'"),
    ("question ->", "at least one output"),
    ("my question -> answer", "not a valid field name"),
    ("q, q -> a", "appears twice"),
    ("q -> a: Frobnicator", "unknown type 'Frobnicator'"),
    ("q, -> a", "empty field name"),
])
@pytest.mark.timeout(30)
def test_malformed_signature_strings(spec, message):
    with pytest.raises(ValueError, match=message):
        dspex.Signature(spec)


@pytest.mark.timeout(30)
def test_signature_declaration_errors():
    with pytest.raises(TypeError, match="must be declared with"):
        class Bad(dspex.Signature):
            question: str
            answer: str = dspex.OutputField()
    with pytest.raises(TypeError, match="signature class"):
        Classify(review="x")
    with pytest.raises(TypeError):
        dspex.Signature(42)


@pytest.mark.timeout(30)
def test_signature_transformations_equality_and_hash():
    sig = dspex.Signature("question -> answer")
    assert sig == dspex.Signature("question -> answer")
    assert hash(sig) == hash(dspex.Signature("question -> answer"))
    other = sig.with_instructions("Answer in one word.")
    assert other != sig and other.instructions == "Answer in one word."
    assert sig.instructions.startswith("Given the fields")  # unchanged
    renamed = dspex.make_signature("question -> answer", signature_name="QA")
    assert renamed != sig and renamed.equals(sig)
    assert len({sig, dspex.Signature("question -> answer"), other}) == 2

    cot = sig.prepend("reasoning", dspex.OutputField(desc="think"))
    assert list(cot.output_fields) == ["reasoning", "answer"]
    appended = sig.append("context", dspex.InputField())
    assert list(appended.input_fields) == ["question", "context"]
    assert list(appended.delete("context").fields) == ["question", "answer"]
    updated = sig.with_updated_fields("answer", desc="one word", prefix="Reply:")
    assert updated.output_fields["answer"].desc == "one word"
    assert updated.output_fields["answer"].prefix == "Reply:"
    with pytest.raises(KeyError, match="no field 'nope'"):
        sig.delete("nope")


@pytest.mark.timeout(30)
def test_signatures_pickle_plain_and_cloudpickle():
    sig = dspex.Signature("context, question -> answer: int", "Count things.")
    back = pickle.loads(pickle.dumps(sig))
    assert back == sig and back.output_fields["answer"].annotation is int
    assert pickle.loads(pickle.dumps(Classify)) is Classify  # importable: by reference
    assert pickle.loads(pickle.dumps(sig.with_instructions("x"))).instructions == "x"

    def make_local():
        class Local(dspex.Signature):
            """A signature defined where it cannot be imported from."""

            text: str = dspex.InputField()
            mood: Literal["happy", "sad"] = dspex.OutputField()

        return Local

    local = make_local()
    for dumps in (pickle.dumps, cloudpickle.dumps):
        copy = pickle.loads(dumps(local))
        assert copy == local and copy.output_fields["mood"].annotation == Literal["happy", "sad"]

    namespace: dict = {"dspex": dspex, "__name__": "__main__"}
    exec(  # a class as a notebook cell defines it
        "class Cell(dspex.Signature):\n"
        "    '''From a notebook.'''\n"
        "    q: str = dspex.InputField()\n"
        "    a: str = dspex.OutputField(desc='short')\n",
        namespace,
    )
    cell = namespace["Cell"]
    copy = cloudpickle.loads(cloudpickle.dumps(cell))
    assert copy == cell and copy.instructions == "From a notebook."
    assert copy.output_fields["a"].desc == "short"


# -- examples and predictions --------------------------------------------------------------


@pytest.mark.timeout(30)
def test_example_access_inputs_labels_and_copies():
    ex = dspex.Example(question="2+2?", answer="4").with_inputs("question")
    assert ex.question == "2+2?" and ex["answer"] == "4"
    assert ex.inputs().toDict() == {"question": "2+2?"}
    assert ex.labels().toDict() == {"answer": "4"}
    assert ex.input_keys == ("question",)
    assert ex == dspex.Example(question="2+2?", answer="4")
    assert ex != dspex.Example(question="2+2?", answer="5")
    assert dict(ex) == {"question": "2+2?", "answer": "4"} and len(ex) == 2
    assert "answer" in ex and list(ex.keys()) == ["question", "answer"]
    c = ex.copy(answer="four")
    assert c.answer == "four" and ex.answer == "4" and c.input_keys == ("question",)
    assert ex.without("answer").toDict() == {"question": "2+2?"}
    ex2 = dspex.Example(ex, extra=1)
    assert ex2.extra == 1 and ex2.input_keys == ("question",)
    ex2.note = "n"
    assert ex2["note"] == "n"
    assert hash(ex) == hash(dspex.Example(question="2+2?", answer="4"))
    with pytest.raises(AttributeError, match="no field 'missing'"):
        _ = ex.missing
    with pytest.raises(ValueError, match="with_inputs"):
        dspex.Example(question="q").inputs()
    back = pickle.loads(pickle.dumps(ex))
    assert back == ex and back.input_keys == ("question",)
    assert "question='2+2?'" in repr(ex) and "input_keys=['question']" in repr(ex)
    assert "<table>" in ex._repr_html_() and "(input)" in ex._repr_html_()


@pytest.mark.timeout(30)
def test_prediction_and_completions():
    pred = dspex.Prediction.from_completions([{"answer": "4"}, {"answer": "5"}])
    assert pred.answer == "4"
    assert pred.completions.answer == ["4", "5"]
    assert len(pred.completions) == 2 and pred.completions[1].answer == "5"
    assert "completions=2" in repr(pred)
    single = dspex.Prediction(answer="4")
    assert single.completions.answer == ["4"]
    assert "<td" in single._repr_html_()
    assert pickle.loads(pickle.dumps(pred)).completions.answer == ["4", "5"]


# -- predictors and adapters ---------------------------------------------------------------


@pytest.mark.timeout(30)
def test_completion_prompt_with_two_demos_exactly():
    lm = dspex.DummyLM([{"sentiment": "positive"}])
    predict = dspex.Predict(Classify)
    predict.demos = list(DEMOS)
    with dspex.context(lm=lm):
        pred = predict(review="Great acting!")
    assert pred.sentiment == "positive"
    assert lm.history[-1]["prompt"] == (
        "Classify the sentiment of a movie review.\n"
        "\n"
        "Review: I loved every minute.\n"
        "Sentiment: positive\n"
        "\n"
        "Review: A boring mess.\n"
        "Sentiment: negative\n"
        "\n"
        "Review: Great acting!\n"
        "Sentiment:"
    )
    assert lm.history[-1]["kwargs"]["stop"] == ["\n"]
    assert repr(predict) == "Predict(Classify(review -> sentiment), demos=2)"


@pytest.mark.timeout(30)
def test_completion_adapter_describe_fields_and_parse():
    adapter = dspex.CompletionAdapter(describe_fields=True)
    prompt = adapter.format(Typed, [], {"question": "q"})
    assert prompt.splitlines()[2:5] == [
        "- Question (input)",
        "- Count (output): an integer",
        "- Ok (output): True or False",
    ]
    assert prompt.endswith("Question: q\nCount:")
    parsed = adapter.parse(Typed, " 3\nOk: yes\nVerdict: No\nQuestion: next one")
    assert parsed == {"count": 3, "ok": True, "label": "no"}


@pytest.mark.timeout(30)
def test_parse_errors_name_fields_and_show_output():
    adapter = dspex.CompletionAdapter()
    with pytest.raises(dspex.AdapterParseError, match=r"missing output field\(s\) \['ok'") as e:
        adapter.parse(Typed, " 3\nVerdict: yes")
    assert e.value.missing == ["ok"] and "Verdict: yes" in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(dspex.AdapterParseError, match="'count' \\(int\\): expected an integer"):
        adapter.parse(Typed, " three\nOk: yes\nVerdict: yes")
    with pytest.raises(dspex.AdapterParseError, match=r"expected one of \['yes', 'no'\]"):
        adapter.parse(Typed, " 3\nOk: yes\nVerdict: maybe")
    with pytest.raises(dspex.AdapterParseError, match="expected a boolean"):
        adapter.parse(Typed, " 3\nOk: perhaps\nVerdict: yes")


@pytest.mark.timeout(30)
def test_coercion_rules():
    def f(tp):
        return Field("output", name="x", annotation=tp)

    assert coerce_value(f(int), " 1,024. ") == 1024
    assert coerce_value(f(float), "2.5") == 2.5
    assert coerce_value(f(bool), "False") is False
    assert coerce_value(f(Literal["positive", "negative"]), " Positive.") == "positive"
    assert coerce_value(f(list[str]), '["a", "b"]') == ["a", "b"]
    assert coerce_value(f(int | None), "None") is None
    assert coerce_value(f(int), "7\nbecause") == 7
    with pytest.raises(ValueError):
        coerce_value(f(dict), "[1]")


@pytest.mark.timeout(30)
def test_typed_outputs_through_predict():
    lm = dspex.DummyLM([{"count": "2", "ok": "true", "label": "Yes"}])
    pred = dspex.Predict(Typed)
    pred.lm = lm
    out = pred(question="q")
    assert (out.count, out.ok, out.label) == (2, True, "yes")
    assert lm.history[-1]["kwargs"]["stop"] == ["\n\n"]


@pytest.mark.timeout(30)
def test_multi_field_generation_continues_field_by_field():
    prompts = []

    def reply(prompt):
        prompts.append(prompt)
        return " add two and two" if prompt.endswith("Reasoning:") else " 4"

    cot = dspex.ChainOfThought("question -> answer")
    cot.lm = dspex.DummyLM(reply)
    out = cot(question="2+2?")
    assert (out.reasoning, out.answer) == ("add two and two", "4")
    assert len(prompts) == 2
    assert prompts[1].endswith("Question: 2+2?\nReasoning: add two and two\nAnswer:")
    assert list(cot.signature.output_fields) == ["reasoning", "answer"]
    assert cot.signature.output_fields["reasoning"].multiline


@pytest.mark.timeout(30)
def test_predict_input_errors_and_missing_lm():
    predict = dspex.Predict(Classify)
    with pytest.raises(TypeError, match=r"missing input field\(s\) 'review'; unknown input "
                                        r"field\(s\) 'text' for Classify\(review -> sentiment\)"):
        predict(text="x")
    with pytest.raises(TypeError, match=r"missing input field\(s\) 'review' for Classify"):
        predict()
    with pytest.raises(TypeError, match=r"unknown input field\(s\) 'sentiment'.*output field"):
        predict(review="x", sentiment="positive")
    with pytest.raises(TypeError, match="keyword arguments"):
        predict("a review")
    with pytest.raises(RuntimeError, match=r"dspex.configure\(lm="):
        predict(review="x")


@pytest.mark.timeout(30)
def test_predict_lm_resolution_config_and_trace():
    global_lm = dspex.DummyLM([{"answer": "global"}] * 3)
    own_lm = dspex.DummyLM([{"answer": "own"}])
    dspex.configure(lm=global_lm)
    qa = dspex.Predict("question -> answer", temperature=0.7)
    assert qa(question="q").answer == "global"
    assert global_lm.history[-1]["kwargs"]["temperature"] == 0.7
    qa.lm = own_lm
    trace: list = []
    with dspex.context(trace=trace):
        assert qa(question="q2").answer == "own"
    assert len(trace) == 1 and trace[0][0] is qa and trace[0][1] == {"question": "q2"}
    assert trace[0][2].answer == "own"
    assert qa(question="q3", lm=global_lm, config={"max_tokens": 5}).answer == "global"
    assert global_lm.history[-1]["kwargs"]["max_tokens"] == 5
    assert repr(qa).endswith("demos=0, lm='dummy')")


@pytest.mark.timeout(30)
def test_several_completions_and_signature_assignment():
    lm = dspex.DummyLM([{"answer": "a"}, {"answer": "b"}, {"answer": "c"}])
    qa = dspex.Predict("question -> answer", n=3)
    qa.lm = lm
    pred = qa(question="q")
    assert pred.answer == "a" and pred.completions.answer == ["a", "b", "c"]
    assert lm.calls == 1 and lm.history[-1]["kwargs"]["n"] == 3
    qa.signature = "question -> reply"
    assert list(qa.signature.output_fields) == ["reply"]


@pytest.mark.timeout(30)
def test_dummy_lm_modes():
    by_key = dspex.DummyLM({"France": {"answer": "Paris"}, "Italy": {"answer": "Rome"}})
    qa = dspex.Predict("question -> answer")
    qa.lm = by_key
    qa.demos = [dspex.Example(question="Capital of France?", answer="Paris")]
    assert qa(question="Capital of Italy?").answer == "Rome"
    raw = dspex.DummyLM(["first\nsecond"])
    assert raw(prompt="x", stop=["\n"]) == ["first"]
    with pytest.raises(dspex.LMError, match="no answers left"):
        raw(prompt="x")
    assert raw.calls == 1
    echo = dspex.DummyLM(lambda prompt: prompt.upper())
    for i in range(105):
        assert echo(prompt=f"p{i}") == [f"P{i}"]
    assert echo.calls == 105 and len(echo.history) == 100
    assert echo.history[0]["prompt"] == "p5" and echo.history[-1]["output"] == "P104"
    assert cloudpickle.loads(cloudpickle.dumps(echo)).calls == 0  # counters stay here


@pytest.mark.timeout(30)
def test_chat_adapter_messages_and_parsing():
    adapter = dspex.ChatAdapter()
    messages = adapter.format(Classify, DEMOS, {"review": "Great acting!"})
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant",
                                             "user"]
    system = messages[0]["content"]
    assert system.startswith("Classify the sentiment of a movie review.")
    assert "1. `review` (str): a short movie review" in system
    assert "1. `sentiment` (str): positive or negative" in system
    assert messages[1]["content"] == "[[ ## review ## ]]\nI loved every minute."
    assert messages[2]["content"] == ("[[ ## sentiment ## ]]\npositive\n\n"
                                      "[[ ## completed ## ]]")
    assert messages[-1]["content"].startswith("[[ ## review ## ]]\nGreat acting!")
    assert adapter.parse(Typed, "[[ ## count ## ]]\n3\n[[ ## ok ## ]]\nno\n"
                                "[[ ## label ## ]]\nyes\n[[ ## completed ## ]]") == \
        {"count": 3, "ok": False, "label": "yes"}
    with pytest.raises(dspex.AdapterParseError, match=r"\[\[ ## ok ## \]\]"):
        adapter.parse(Typed, "[[ ## count ## ]]\n3")

    lm = dspex.DummyLM([{"sentiment": "negative"}])
    predict = dspex.Predict(Classify)
    predict.lm = lm
    with dspex.context(adapter=adapter):
        assert predict(review="Dull.").sentiment == "negative"
    assert lm.history[-1]["messages"][0]["role"] == "system"


# -- modules ---------------------------------------------------------------------------------


class Pipeline(dspex.Module):
    def __init__(self):
        super().__init__()
        self.qa = QA()
        self.steps = [dspex.Predict("a -> b"), dspex.Predict("b -> c")]


@pytest.mark.timeout(30)
def test_module_composition_and_named_predictors():
    lm = dspex.DummyLM([{"reasoning": "r", "answer": "a long answer"},
                        {"short_answer": "short"}])
    prog = QA()
    with dspex.context(lm=lm):
        out = prog(question="q")
    assert (out.answer, out.reasoning) == ("short", "r")
    assert [n for n, _ in prog.named_predictors()] == ["draft.predict", "shorten"]
    assert [n for n, _ in Pipeline().named_predictors()] == [
        "qa.draft.predict", "qa.shorten", "steps[0]", "steps[1]"]
    p = dspex.Predict("q -> a")
    assert p.named_predictors() == [("self", p)]
    assert "shorten = Predict(StringSignature(answer -> short_answer), demos=0)" in repr(prog)


@pytest.mark.timeout(30)
def test_deepcopy_reset_copy_and_set_lm():
    lm = dspex.DummyLM([])
    prog = QA()
    prog.set_lm(lm)
    prog.shorten.demos = [dspex.Example(answer="x", short_answer="y")]
    copy = prog.deepcopy()
    assert copy.shorten is not prog.shorten and copy.shorten.lm is lm
    copy.shorten.demos.append(dspex.Example(answer="z", short_answer="w"))
    assert len(prog.shorten.demos) == 1
    fresh = prog.reset_copy()
    assert fresh.shorten.demos == [] and fresh.get_lm() is lm
    assert len(prog.shorten.demos) == 1


# -- state -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_save_load_round_trip(tmp_path):
    prog = QA()
    prog.draft.predict.signature = prog.draft.predict.signature.with_instructions("Think.")
    prog.draft.demos = [
        dspex.Example(question="2+2?", reasoning="add", answer="4").with_inputs("question"),
        dspex.Example(question="1+1?", answer="2"),
    ]
    prog.shorten.signature = prog.shorten.signature.with_updated_fields(
        "short_answer", desc="three words at most")
    prog.shorten.lm = dspex.LocalLM(n_ctx=512, max_tokens=16)
    path = tmp_path / "best.json"
    prog.save(path)
    saved = json.loads(path.read_text())
    assert saved["metadata"]["format"] == "foundation_dask.dspex/1"
    assert saved["draft.predict"]["demos"][0] == {
        "question": "2+2?", "reasoning": "add", "answer": "4", "_input_keys": ["question"]}
    assert saved["shorten"]["lm"]["type"] == "LocalLM"
    assert "\n  " in path.read_text()  # indented, human-readable

    fresh = dspex.load_program(path, QA())
    assert fresh.dump_state() == prog.dump_state()
    assert fresh.draft.predict.signature.instructions == "Think."
    assert fresh.shorten.signature.output_fields["short_answer"].desc == "three words at most"
    assert fresh.draft.demos == prog.draft.demos
    assert fresh.draft.demos[0].input_keys == ("question",)
    assert fresh.draft.demos[1].input_keys is None
    assert fresh.shorten.lm.dump_state() == prog.shorten.lm.dump_state()
    path2 = tmp_path / "again.json"
    fresh.save(path2)
    assert path2.read_text() == path.read_text()
    assert dspex.load_program(path, QA).dump_state() == prog.dump_state()

    single = dspex.Predict(Classify)
    single.demos = list(DEMOS)
    single.save(tmp_path / "one.json")
    other = dspex.Predict(Classify).load(tmp_path / "one.json")
    assert other.demos == DEMOS and other.demos[1].input_keys == ("review",)
    rebuilt = dspex.Predict.load(tmp_path / "one.json")  # signature read from the file
    assert rebuilt.signature == Classify and rebuilt.demos == DEMOS
    assert dspex.load_program(tmp_path / "one.json", dspex.Predict).signature == Classify
    typed = dspex.Predict("q -> n: int, tags: list[str], v: Literal['a', 'b']")
    typed.save(tmp_path / "typed.json")
    assert dspex.Predict.load(tmp_path / "typed.json").signature == typed.signature
    with pytest.raises(TypeError, match=r"ChainOfThought.load\(path, ...\) needs"):
        dspex.ChainOfThought.load(tmp_path / "one.json")


@pytest.mark.timeout(30)
def test_load_state_mismatch_errors(tmp_path):
    prog = QA()
    with pytest.raises(ValueError, match=r"predictors missing from the state \['shorten'\]"):
        prog.load_state({"draft.predict": prog.draft.predict.dump_state()})
    state = dspex.Predict("x -> y").dump_state()
    with pytest.raises(ValueError, match="do not match"):
        dspex.Predict(Classify).load_state(state)


# -- pickling and threads --------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_programs_pickle_with_pickle_and_cloudpickle():
    prog = QA()
    prog.shorten.demos = [dspex.Example(answer="a b c", short_answer="a").with_inputs("answer")]
    prog.set_lm(dspex.DummyLM([{"reasoning": "r", "answer": "x y"}, {"short_answer": "x"}]))
    for dumps in (pickle.dumps, cloudpickle.dumps):
        copy = pickle.loads(dumps(prog))
        assert copy.dump_state() == prog.dump_state()
        assert copy(question="q").answer == "x"
        assert copy.shorten.demos[0].input_keys == ("answer",)

    def make_program():
        class Local(dspex.Module):
            def __init__(self):
                super().__init__()
                self.p = dspex.Predict("question -> answer: int")

            def forward(self, question):
                return self.p(question=question)

        return Local()

    local = make_program()
    local.p.lm = dspex.DummyLM([{"answer": "7"}])
    copy = cloudpickle.loads(cloudpickle.dumps(local))
    assert copy(question="q").answer == 7


@pytest.mark.timeout(30)
def test_context_is_isolated_between_threads():
    lms = {name: dspex.DummyLM([{"answer": name}]) for name in ("t1", "t2")}
    dspex.configure(lm=dspex.DummyLM([{"answer": "main"}]))
    barrier = threading.Barrier(2, timeout=10)
    results: dict[str, tuple] = {}

    def run(name):
        with dspex.context(lm=lms[name]):
            barrier.wait()  # both contexts are open at once
            seen = dspex.settings.lm
            answer = dspex.Predict("question -> answer")(question="q").answer
            barrier.wait()
        results[name] = (seen, answer)

    threads = [threading.Thread(target=run, args=(n,)) for n in lms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert results == {"t1": (lms["t1"], "t1"), "t2": (lms["t2"], "t2")}
    assert dspex.Predict("question -> answer")(question="q").answer == "main"
    with dspex.context(cache=False):
        assert dspex.settings.cache is False
        with dspex.context(adapter=dspex.ChatAdapter()):
            assert dspex.settings.cache is False
    assert dspex.settings.cache is True


@pytest.mark.timeout(30)
def test_settings_and_lazy_names():
    with pytest.raises(AttributeError, match="dspex.configure"):
        dspex.settings.lm = None
    assert "Evaluate" in dir(dspex)
    with pytest.raises(AttributeError):
        _ = dspex.NoSuchThing
