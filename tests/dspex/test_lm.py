"""DSPEx LM clients: the OpenAI-compatible client against a real local HTTP server, the
disk cache (also across processes), and the real local model (SmolLM2 through llama.cpp),
in this process and in a Dask worker process."""

from __future__ import annotations

import email.utils
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import cloudpickle
import dask.config
import pytest

from foundation_dask import dspex
from foundation_dask.dspex import lm as lm_module
from tests._helpers import require_local_model
from tests.support import ScriptedLMServer


class Sentiment(dspex.Signature):
    """Classify the sentiment of a movie review."""

    review: str = dspex.InputField(desc="a short movie review")
    sentiment: str = dspex.OutputField(desc="positive or negative")


SENTIMENT_DEMOS = [
    dspex.Example(review="I loved every minute of this film, wonderful acting.",
                  sentiment="positive").with_inputs("review"),
    dspex.Example(review="A boring, badly written mess. I walked out.",
                  sentiment="negative").with_inputs("review"),
]

REVIEWS = [
    ("An absolute delight, funny and moving.", "positive"),
    ("Terrible plot and awful dialogue.", "negative"),
    ("The best movie I have seen this year!", "positive"),
    ("I hated it, a complete waste of time.", "negative"),
]


@pytest.fixture(autouse=True)
def isolated(tmp_path):
    """A private cache directory and default settings for every test."""
    dspex.settings.reset()
    with dask.config.set({"foundation.dspex.cache-dir": str(tmp_path / "lm-cache")}):
        yield tmp_path / "lm-cache"
    dspex.settings.reset()


@pytest.fixture
def server():
    with ScriptedLMServer.running() as srv:
        yield srv


def make_lm(server, **kwargs) -> dspex.OpenAICompatibleLM:
    options = {"api_key": "sk-test-secret", "backoff_base": 0.05, "timeout": 10,
               "max_retries": 5, **kwargs}
    return dspex.OpenAICompatibleLM("llama3", api_base=server.api_base, **options)


# -- HTTP client -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_completion_and_chat_requests(server):
    lm = make_lm(server, cache=False, max_tokens=32)
    assert lm(prompt="Say hi", stop=["\n"]) == ["reply-1"]
    first = server.requests[0]
    assert first["path"] == "/v1/completions"
    assert first["body"] == {"model": "llama3", "prompt": "Say hi", "temperature": 0.0,
                             "max_tokens": 32, "stop": ["\n"]}
    assert first["headers"]["Authorization"] == "Bearer sk-test-secret"
    assert lm(messages=[{"role": "user", "content": "hi"}]) == ["reply-2"]
    assert server.requests[1]["path"] == "/v1/chat/completions"
    assert server.requests[1]["body"]["messages"] == [{"role": "user", "content": "hi"}]
    chat = make_lm(server, cache=False, model_type="chat")
    chat(prompt="wrapped")
    assert server.requests[2]["body"]["messages"] == [{"role": "user", "content": "wrapped"}]
    assert (lm.calls, lm.prompt_tokens, lm.completion_tokens) == (2, 22, 6)
    entry = lm.history[-1]
    assert entry["cache_hit"] is False and entry["output"] == "reply-2"
    assert entry["latency"] > 0 and entry["prompt_tokens"] == 11
    # OpenAI's and vLLM's count of prompt tokens served from their prompt cache
    assert lm.generate(prompt="again").cached_prompt_tokens == 8
    assert "sk-test-secret" not in repr(lm) and "sk-test-secret" not in json.dumps(
        lm.dump_state())
    # rebuilt from its state (as on a worker when the LM does not pickle): same settings,
    # the cache switch included, no key
    rebuilt = type(chat).from_state(chat.dump_state())
    assert (rebuilt.cache, rebuilt.model_type, rebuilt.dump_state()) == (
        False, "chat", chat.dump_state())
    with pytest.raises(TypeError, match="exactly one of"):
        lm()


@pytest.mark.timeout(30)
def test_dspy_style_lm_and_env_key(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    lm = dspex.LM("openai/gpt-4o-mini", api_base=server.api_base, cache=False, num_retries=0)
    assert lm.model == "openai/gpt-4o-mini" and lm.max_retries == 0
    server.reply = lambda body, n: "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]"
    qa = dspex.Predict("question -> answer: int")
    with dspex.context(lm=lm, adapter=dspex.ChatAdapter()):
        assert qa(question="2+2?").answer == 4
    request = server.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "gpt-4o-mini"
    assert request["headers"]["Authorization"] == "Bearer sk-from-env"
    assert request["body"]["messages"][0]["role"] == "system"


@pytest.mark.timeout(30)
def test_retries_429_then_500_honour_retry_after(server):
    server.script = [
        ("status", 429, {"Retry-After": "0.2"}, {"error": {"message": "slow down"}}),
        ("status", 500, {}, {"error": {"message": "boom"}}),
        ("ok",),
    ]
    lm = make_lm(server, cache=False)
    t0 = time.monotonic()
    assert lm(prompt="hello") == ["reply-3"]
    elapsed = time.monotonic() - t0
    assert len(server.requests) == 3
    assert server.requests[1]["time"] - server.requests[0]["time"] >= 0.2
    assert elapsed >= 0.2
    assert lm.calls == 1


@pytest.mark.timeout(30)
def test_retry_after_http_date_and_limits():
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= lm_module._parse_retry_after(future) <= 30
    assert lm_module._parse_retry_after("1.5") == 1.5
    assert lm_module._parse_retry_after(email.utils.formatdate(0, usegmt=True)) == 0.0
    assert lm_module._parse_retry_after("soon") is None


@pytest.mark.timeout(30)
def test_long_retry_after_fails_fast(server):
    server.script = [("status", 503, {"Retry-After": "3600"}, {"error": "maintenance"})]
    lm = make_lm(server, cache=False)
    with pytest.raises(dspex.LMError, match="retry after 3600 s") as info:
        lm(prompt="x")
    assert info.value.status == 503 and len(server.requests) == 1


@pytest.mark.timeout(30)
def test_4xx_raises_with_server_message_without_retrying(server):
    server.script = [("status", 401, {}, {"error": {"message": "Invalid API key provided",
                                                    "type": "invalid_request_error"}})]
    lm = make_lm(server, cache=False)
    with pytest.raises(dspex.LMError, match="HTTP 401: Invalid API key provided") as info:
        lm(prompt="x")
    assert info.value.status == 401 and info.value.message == "Invalid API key provided"
    assert "sk-test-secret" not in str(info.value)
    assert len(server.requests) == 1


@pytest.mark.timeout(30)
def test_retries_exhausted_on_5xx(server):
    server.script = [("status", 503, {}, {"error": {"message": "overloaded"}})] * 3
    lm = make_lm(server, cache=False, max_retries=2)
    with pytest.raises(dspex.LMError, match="after 3 attempts, last with HTTP 503: overloaded"):
        lm(prompt="x")
    assert len(server.requests) == 3


@pytest.mark.timeout(30)
def test_timeout_raises_after_retry(server):
    server.script = [("slow", 20), ("slow", 20)]
    lm = make_lm(server, cache=False, timeout=0.3, max_retries=1)
    t0 = time.monotonic()
    with pytest.raises(dspex.LMTimeoutError, match="timed out after 0.3 s") as info:
        lm(prompt="x")
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - t0 >= 0.6  # two attempts of 0.3 s each
    assert len(server.requests) == 2


@pytest.mark.timeout(30)
def test_connection_refused_is_retried_then_raises(server):
    base = server.api_base
    server.shutdown()
    server.server_close()
    lm = dspex.OpenAICompatibleLM("m", api_base=base, cache=False, max_retries=2,
                                  backoff_base=0.01, timeout=2)
    with pytest.raises(dspex.LMError, match="after 3 attempts"):
        lm(prompt="x")


# -- disk cache ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_disk_cache_hits_bypass_and_misses(server, isolated):
    lm = make_lm(server)
    assert lm(prompt="cached?") == ["reply-1"]
    assert lm(prompt="cached?") == ["reply-1"]
    assert len(server.requests) == 1
    assert (lm.calls, lm.cache_hits) == (2, 1)
    assert [e["cache_hit"] for e in lm.history] == [False, True]
    assert lm.prompt_tokens == 11  # tokens count model work only
    assert (isolated / "lm-cache.sqlite3").exists()

    assert lm(prompt="cached?", temperature=0.5) == ["reply-2"]  # another kwarg: a miss
    assert make_lm(server, cache=False)(prompt="cached?") == ["reply-3"]
    with dspex.context(cache=False):
        assert lm(prompt="cached?") == ["reply-4"]
    dspex.configure(cache=False)
    assert lm(prompt="cached?") == ["reply-5"]
    dspex.configure(cache=True)
    assert lm.generate(prompt="cached?").cache_hit is True
    elsewhere = dspex.OpenAICompatibleLM("llama3", api_base=server.api_base + "/other",
                                         api_key="k")  # another server: another cache entry
    assert elsewhere.generate(prompt="cached?").cache_hit is False
    assert len(server.requests) == 6 and server.requests[-1]["path"] == "/v1/other/completions"


@pytest.mark.timeout(30)
def test_clear_cache(server):
    lm = make_lm(server)
    lm(prompt="a")
    assert dspex.clear_cache() == 1
    assert lm(prompt="a") == ["reply-2"]
    assert len(server.requests) == 2


@pytest.mark.timeout(120)
def test_cache_is_shared_between_processes(server, isolated):
    lm = make_lm(server)
    assert lm(prompt="shared", max_tokens=7) == ["reply-1"]
    script = textwrap.dedent(f"""
        import json, dask.config
        from foundation_dask import dspex
        dask.config.set({{"foundation.dspex.cache-dir": {str(isolated)!r}}})
        lm = dspex.OpenAICompatibleLM("llama3", api_base={server.api_base!r},
                                      api_key="another-key", max_retries=0)
        out = lm(prompt="shared", max_tokens=7)
        print(json.dumps({{"out": out, "hits": lm.cache_hits}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=100, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"out": ["reply-1"], "hits": 1}
    assert len(server.requests) == 1


@pytest.mark.timeout(60)
def test_cache_concurrent_writers_from_threads(server):
    lm = make_lm(server)
    errors: list[BaseException] = []

    def work(i):
        try:
            for j in range(5):
                lm(prompt=f"p{i}-{j}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    assert errors == []
    assert len(lm_module.get_cache()) == 20
    assert lm.calls == 20 and len(server.requests) == 20


# -- the real local model --------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_local_model_sentiment_loaded_once_and_pickled_copy_reuses_it():
    require_local_model()
    lm = dspex.LocalLM(cache=False, max_tokens=8)
    predict = dspex.Predict(Sentiment)
    predict.demos = list(SENTIMENT_DEMOS)
    predict.lm = lm
    t0 = time.perf_counter()
    first = predict(review=REVIEWS[0][0]).sentiment
    first_call = time.perf_counter() - t0
    loads = dspex.LocalLM.process_stats()["loads"]
    answers = [first] + [predict(review=r).sentiment for r, _ in REVIEWS[1:]]
    assert answers == [want for _, want in REVIEWS]
    assert [k for k in dspex.LocalLM.loaded_models() if k == lm.model_key] == [lm.model_key]
    assert dspex.LocalLM.process_stats()["loads"] == loads
    assert lm.calls == 4 and lm.completion_tokens > 0 and lm.prompt_tokens > 100
    # prompt processing uses the same threads as generation, not llama.cpp's all-cores
    # default (which made two worker processes on two cores many times slower)
    model = lm.load()
    assert model.n_threads == model.n_threads_batch == lm.n_threads == 1
    # two prompts with the same demos: the second reuses the shared prefix that llama.cpp
    # keeps in its KV cache, and says how much
    before = dspex.LocalLM.process_stats()
    t0 = time.perf_counter()
    again = lm.generate(prompt=lm.history[-2]["prompt"], stop=["\n"])
    took = time.perf_counter() - t0
    assert again.cached_prompt_tokens > again.prompt_tokens // 2
    # the process counts the call and its tokens (what the quality bench sums)
    after = dspex.LocalLM.process_stats()
    assert after["calls"] == before["calls"] + 1
    assert after["prompt_tokens"] - before["prompt_tokens"] == again.prompt_tokens
    assert after["cached_tokens"] - before["cached_tokens"] == again.cached_prompt_tokens
    assert 0 < after["call_seconds"] - before["call_seconds"] <= took  # the model's busy time
    fresh = lm.generate(prompt="Unrelated: " + lm.history[-1]["prompt"], stop=["\n"])
    assert fresh.cached_prompt_tokens < 5

    for dumps in (pickle.dumps, cloudpickle.dumps):
        clone = pickle.loads(dumps(lm))
        assert clone.calls == 0 and clone.model_key == lm.model_key
        again = clone(prompt=lm.history[-1]["prompt"], stop=["\n"])
        assert again == [lm.history[-1]["output"]]  # deterministic at temperature 0
    assert dspex.LocalLM.process_stats()["loads"] == loads
    print(f"\nLocalLM first call (load + generate) {first_call:.2f} s; "
          f"mean later call {sum(e['latency'] for e in list(lm.history)[1:]) / 3:.2f} s")


@pytest.mark.timeout(600)
def test_local_model_keeps_the_states_of_programs_taking_turns():
    """Two programs (their own demos) taking turns on one model: each turn restarts from
    the state the model was in after that program's last turn, not from its
    instructions and demos again; the answers are the same without kept states."""
    require_local_model()
    lm = dspex.LocalLM(cache=False, max_tokens=8)
    prompts = []
    for demos in (SENTIMENT_DEMOS, SENTIMENT_DEMOS[::-1] + [SENTIMENT_DEMOS[0]]):
        predict = dspex.Predict(Sentiment)
        predict.demos, predict.lm = list(demos), lm
        for review, _ in REVIEWS:
            predict(review=review)
            prompts.append(lm.history[-1]["prompt"])
    turns = [prompts[i] for pair in zip(range(4), range(4, 8), strict=True) for i in pair]

    def take_turns() -> tuple[list[str], list[float]]:
        outs, shares = [], []
        for prompt in turns:
            out = lm.generate(prompt=prompt, stop=["\n"])
            outs.append(out.outputs[0])
            shares.append(out.cached_prompt_tokens / out.prompt_tokens)
        return outs, shares

    dspex.LocalLM.forget_states()
    kept_answers, kept = take_turns()
    # from the third turn on, each program finds its own prefix (the first two turns
    # followed the other program's prompts of the same reviews)
    assert min(kept[2:]) > 0.5, kept
    dspex.LocalLM.unload_models()
    with dask.config.set({"foundation.dspex.local-lm-kv-states": 0}):
        answers, shares = take_turns()
        assert max(shares[2:]) < 0.5, shares  # only the instructions are shared
    dspex.LocalLM.unload_models()
    assert kept_answers == answers
    with (dask.config.set({"foundation.dspex.local-lm-kv-states": "lots"}),
          pytest.raises(dspex.LMError, match="local-lm-kv-states must be a size")):
        lm.generate(prompt=turns[0])


@pytest.mark.timeout(600)
def test_local_model_chat_messages_and_disk_cache():
    require_local_model()
    lm = dspex.LocalLM(max_tokens=12)
    messages = [{"role": "user", "content": "Reply with one word: hello"}]
    out = lm(messages=messages)
    assert isinstance(out[0], str) and out[0].strip()
    assert lm(messages=messages) == out
    assert lm.cache_hits == 1 and lm.history[-1]["cache_hit"] is True
    with pytest.raises(TypeError, match="unknown generation arguments"):
        lm(prompt="x", frobnicate=1)


def _run_on_worker(program, review, lm=None):
    """Runs in the worker process: predict, report the process's model cache."""
    if lm is None:
        answer = program(review=review).sentiment
    else:
        with dspex.context(lm=lm):
            answer = program(review=review).sentiment
    return answer, dspex.LocalLM.process_stats()


def _answer_and_offer(lm, prompt, key):
    """Runs in a worker: answer ``prompt``, then put the model's state aside."""
    from foundation_dask.dspex.lm.local import offer_states

    out = lm.generate(prompt=prompt, stop=["\n"])
    offer_states(key)
    return out.outputs[0].strip()


def _answer_from(lm, prompt, states):
    """Runs in a worker: keep ``states`` (maybe none), answer ``prompt``; the answer, the
    prompt tokens served from a kept state and the process's counts."""
    from foundation_dask.dspex.lm.local import receive_states

    lm.generate(prompt="An unrelated prompt to load the model:")  # its own state first
    receive_states(states)
    out = lm.generate(prompt=prompt, stop=["\n"])
    return out.outputs[0].strip(), out.cached_prompt_tokens, out.prompt_tokens, lm.process_stats()


@pytest.mark.timeout(600)
def test_local_model_states_move_between_worker_processes():
    """A model state made on one worker (the KV cache of a prompt's instructions and
    demos) reaches another worker as a task result: a prompt there with the same prefix
    starts from it, with the same answer as evaluating it whole."""
    require_local_model()
    from distributed import Client, LocalCluster

    from foundation_dask.dspex.lm.local import take_offer

    lm = dspex.LocalLM(cache=False, max_tokens=8)
    predict = dspex.Predict(Sentiment)
    predict.demos = list(SENTIMENT_DEMOS)
    prompts = [dspex.CompletionAdapter().format(predict.signature, predict.demos,
                                                {"review": review}) for review, _ in REVIEWS]
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(3)
        a, b, c = sorted(client.scheduler_info()["workers"])
        made = client.submit(_answer_and_offer, lm, prompts[0], "demo-state", workers=[a],
                             pure=False)
        states = client.submit(take_offer, "demo-state", made, workers=[a], pure=False)
        assert made.result() == REVIEWS[0][1]
        answer, cached, tokens, stats = client.submit(
            _answer_from, lm, prompts[1], states, workers=[b], pure=False).result()
        # a third worker without the state: only what the unrelated prompt shares
        alone, cached_alone, _, _ = client.submit(
            _answer_from, lm, prompts[1], [], workers=[c], pure=False).result()
        # the other worker had nothing put aside under that key
        assert client.submit(take_offer, "nothing-here", workers=[b], pure=False).result() == []
    assert answer == alone == REVIEWS[1][1]
    assert cached > tokens // 2 and cached_alone < 5
    assert stats["states_received"] == 1 and stats["states_refused"] == 0


@pytest.mark.timeout(600)
def test_a_received_state_llama_cpp_refuses_is_counted_and_the_prompt_evaluated_whole():
    """A state llama.cpp cannot load (here cut short; a different build's layout) is
    dropped and counted; the prompt is evaluated from its start, with the same answer."""
    require_local_model()
    from foundation_dask.dspex.lm import local

    lm = dspex.LocalLM(cache=False, max_tokens=8)
    predict = dspex.Predict(Sentiment)
    predict.demos = list(SENTIMENT_DEMOS)
    first, second = (dspex.CompletionAdapter().format(predict.signature, predict.demos,
                                                       {"review": review})
                     for review, _ in REVIEWS[:2])
    lm.generate(prompt=first, stop=["\n"])
    local.offer_states("cut")
    [(key, ids, data)] = local.take_offer("cut")
    local.LocalLM.unload_models()
    lm.generate(prompt="An unrelated prompt to load the model:")
    refused = local.LocalLM.process_stats()["states_refused"]
    local.receive_states([(key, ids, data[: len(data) // 2])])
    out = lm.generate(prompt=second, stop=["\n"])
    assert out.outputs[0].strip() == REVIEWS[1][1] and out.cached_prompt_tokens < 5
    assert local.LocalLM.process_stats()["states_refused"] == refused + 1


@pytest.mark.timeout(600)
def test_local_model_in_a_dask_worker_process():
    require_local_model()
    from distributed import Client, LocalCluster

    lm = dspex.LocalLM(cache=False, max_tokens=8)
    program = dspex.Predict(Sentiment)
    program.demos = list(SENTIMENT_DEMOS)
    program.lm = lm  # shipped with the program
    bare = dspex.Predict(Sentiment)
    bare.demos = list(SENTIMENT_DEMOS)  # its LM is passed explicitly
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        first = client.submit(_run_on_worker, program, REVIEWS[0][0], pure=False).result()
        second = client.submit(_run_on_worker, bare, REVIEWS[1][0], lm, pure=False).result()
    (a1, stats1), (a2, stats2) = first, second
    assert (a1, a2) == (REVIEWS[0][1], REVIEWS[1][1])
    assert stats1["pid"] == stats2["pid"] != os.getpid()
    assert stats1["loads"] == stats2["loads"] == 1
    assert stats2["models"] == [lm.model_key]


@pytest.mark.timeout(120)
def test_import_is_light():
    code = ("import sys; from foundation_dask import dspex; dspex.LocalLM(); "
            "print(sorted(m for m in ('llama_cpp', 'bokeh', 'llm') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=100)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
