"""Secrets travel by reference: their values reach the workers through the scheduler's
memory and are never in a pickle, so never in a file written from one."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import cloudpickle
import pytest

import foundation_dask as fd
from foundation_dask.core.plugin import extension
from foundation_dask.core.secrets import Secret, reveal

VALUE = "sk-test-7f3a9c1e5b2d"


def _reveal(secret: Secret) -> str:
    return secret.get()


@pytest.mark.timeout(120)
def test_a_secret_reaches_a_worker_process_but_not_its_pickle(fd_client):
    secret = Secret(VALUE, env="FD_TEST_SECRET", what="the test key")
    assert VALUE not in repr(secret) and VALUE not in str(secret)
    for blob in (pickle.dumps(secret), cloudpickle.dumps({"lm": [secret]})):
        assert VALUE.encode() not in blob
    # worker processes resolve it from the scheduler's memory
    workers = list(fd_client.scheduler_info()["workers"])
    answers = fd_client.gather([fd_client.submit(_reveal, secret, workers=[w], pure=False)
                                for w in workers])
    assert answers == [VALUE, VALUE]
    # an unpickled copy in this process is the same secret
    copy = pickle.loads(pickle.dumps(secret))
    assert copy == secret and copy.get() == VALUE and reveal(copy) == VALUE
    assert reveal("plain") == "plain" and reveal(None) is None
    with pytest.raises(TypeError, match="must be a string"):
        Secret(42)  # type: ignore[arg-type]


def _stored(dask_scheduler) -> int:
    return len(extension(dask_scheduler, "secrets").values)


@pytest.mark.timeout(120)
def test_the_store_is_in_memory_and_a_lost_value_names_the_fix(fd_client, tmp_path):
    secret = Secret(VALUE, env="FD_TEST_SECRET", what="the API key of LM('m')")
    assert fd_client.submit(_reveal, secret, pure=False).result() == VALUE
    assert fd_client.run_on_scheduler(_stored) >= 1
    blob = tmp_path / "spec.pkl"
    blob.write_bytes(pickle.dumps(secret))
    # another process (another cluster, or after the scheduler restarted): no value,
    # the environment variable or a clear error
    script = textwrap.dedent(f"""
        import pickle, sys
        from foundation_dask.errors import SecretUnavailableError
        secret = pickle.loads(open({str(blob)!r}, "rb").read())
        try:
            print("value:", secret.get())
        except SecretUnavailableError as exc:
            print("error:", exc)
    """)
    env_run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60, env={"PATH": "/usr/bin:/bin", "FD_TEST_SECRET": "from-env",
                                              "PYTHONPATH": ":".join(sys.path)})
    assert env_run.stdout.strip() == "value: from-env", env_run.stderr
    bare = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin",
                                           "PYTHONPATH": ":".join(sys.path)})
    out = bare.stdout.strip()
    assert out.startswith("error: the API key of LM('m') is not known"), bare.stderr
    assert "set FD_TEST_SECRET in the environment of the workers" in out
    assert isinstance(fd.SecretUnavailableError("x"), LookupError)
