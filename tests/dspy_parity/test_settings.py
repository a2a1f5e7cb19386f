# Ported from stanfordnlp/dspy tests/utils/test_settings.py
# ruff: noqa: E501  (DSPy's lines kept as they are)
import asyncio
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from foundation_dask import dspex as dspy

# Adjusted (every test): DSPEx has no JSONAdapter; its ChatAdapter stands in.


def test_basic_dspy_settings():
    dspy.configure(lm=dspy.LM("openai/gpt-4o"), adapter=dspy.ChatAdapter(), callbacks=[lambda x: x])
    assert dspy.settings.lm.model == "openai/gpt-4o"
    assert isinstance(dspy.settings.adapter, dspy.ChatAdapter)
    assert len(dspy.settings.callbacks) == 1


def test_dspy_context():
    dspy.configure(lm=dspy.LM("openai/gpt-4o"), adapter=dspy.ChatAdapter(), callbacks=[lambda x: x])
    with dspy.context(lm=dspy.LM("openai/gpt-4o-mini"), callbacks=[]):
        assert dspy.settings.lm.model == "openai/gpt-4o-mini"
        assert len(dspy.settings.callbacks) == 0

    assert dspy.settings.lm.model == "openai/gpt-4o"
    assert len(dspy.settings.callbacks) == 1


def test_dspy_context_parallel():
    dspy.configure(lm=dspy.LM("openai/gpt-4o"), adapter=dspy.ChatAdapter(), callbacks=[lambda x: x])

    def worker(i):
        with dspy.context(lm=dspy.LM("openai/gpt-4o-mini"), trace=[i], callbacks=[]):
            assert dspy.settings.lm.model == "openai/gpt-4o-mini"
            assert dspy.settings.trace == [i]
            assert len(dspy.settings.callbacks) == 0

    with ThreadPoolExecutor(max_workers=5) as executor:
        list(executor.map(worker, range(3)))

    assert dspy.settings.lm.model == "openai/gpt-4o"
    assert len(dspy.settings.callbacks) == 1


def test_dspy_context_with_async_task_group():
    # Adjusted: run with asyncio.run (no pytest-asyncio here); DummyLMs named after the
    # models stand for the mocked litellm calls, and record which model answered.
    calls = []

    def make_lm(model):
        return dspy.DummyLM(lambda prompt: calls.append(model) or "Paris", model=model)

    class MyModule(dspy.Module):
        def __init__(self):
            self.predict = dspy.Predict("question -> answer")

        async def aforward(self, question: str) -> str:
            lm = make_lm("openai/gpt-4o-mini") if "France" in question else make_lm("openai/gpt-4o")
            with dspy.context(lm=lm, trace=[]):
                await asyncio.sleep(0.1)
                assert dspy.settings.lm.model == lm.model
                result = await self.predict.acall(question=question)
                assert len(dspy.settings.trace) == 1
                return result

    module = MyModule()

    async def main():
        with dspy.context(lm=make_lm("openai/gpt-4.1"), adapter=dspy.ChatAdapter()):
            # Define the coroutines to be run
            coroutines = [
                module.acall(question="What is the capital of France?"),
                module.acall(question="What is the capital of France?"),
                module.acall(question="What is the capital of Germany?"),
                module.acall(question="What is the capital of Germany?"),
            ]

            # Run them concurrently and gather results
            results = await asyncio.gather(*coroutines)

            assert results[0].answer == "Paris"
            assert results[1].answer == "Paris"
            assert results[2].answer == "Paris"
            assert results[3].answer == "Paris"

            # France questions use gpt-4o-mini, Germany questions gpt-4o
            assert Counter(calls) == {"openai/gpt-4o-mini": 2, "openai/gpt-4o": 2}

            # The main thread is not affected by the context
            assert dspy.settings.lm.model == "openai/gpt-4.1"
            # Adjusted: DSPEx's default trace is None (DSPy's an empty list)
            assert dspy.settings.trace is None

    asyncio.run(main())


def test_dspy_settings_save_load(tmp_path):
    dspy.configure(lm=dspy.LM("openai/gpt-4o"), adapter=dspy.ChatAdapter(), callbacks=[lambda x: x])

    dspy.settings.save(tmp_path / "settings.pkl")
    dspy.configure(lm=None, adapter=None, callbacks=None)

    loaded_settings = dspy.load_settings(tmp_path / "settings.pkl", allow_pickle=True)
    dspy.configure(**loaded_settings)
    assert dspy.settings.lm.model == "openai/gpt-4o"
    assert isinstance(dspy.settings.adapter, dspy.ChatAdapter)
    assert len(dspy.settings.callbacks) == 1


def test_dspy_settings_save_exclude_keys(tmp_path):
    dspy.configure(lm=dspy.LM("openai/gpt-4o"), adapter=dspy.ChatAdapter(), track_usage=True)

    dspy.settings.save(tmp_path / "settings.pkl", exclude_keys=["adapter", "track_usage"])
    dspy.configure(lm=None, adapter=None, track_usage=False)

    loaded_settings = dspy.load_settings(tmp_path / "settings.pkl", allow_pickle=True)
    dspy.configure(**loaded_settings)
    assert dspy.settings.lm.model == "openai/gpt-4o"
    assert dspy.settings.adapter is None
    assert not dspy.settings.track_usage



def test_settings_save_with_extra_modules(tmp_path):
    # Create a temporary Python file with our custom module
    custom_module_path = tmp_path / "custom_module.py"
    with open(custom_module_path, "w") as f:
        f.write(
            """
def callback(x):
    return x + 1
"""
        )

    # Add the tmp_path to Python path so we can import the module
    sys.path.insert(0, str(tmp_path))
    try:
        import custom_module

        dspy.configure(callbacks=[custom_module.callback])

        settings_path = tmp_path / "settings.pkl"
        sys.path.insert(0, str(tmp_path))

        dspy.configure(callbacks=[custom_module.callback])
        dspy.settings.save(settings_path, modules_to_serialize=[custom_module])

        # Remove the custom module again to simulate it not being available at load time
        sys.modules.pop("custom_module", None)
        sys.path.remove(str(tmp_path))
        del custom_module

        dspy.configure(callbacks=None)

        # Loading should now succeed and preserve the adapter instance
        loaded_settings = dspy.load_settings(settings_path, allow_pickle=True)
        dspy.settings.configure(**loaded_settings)

        assert dspy.settings.callbacks[0](3) == 4

    finally:
        # Only need to clean up sys.path
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
