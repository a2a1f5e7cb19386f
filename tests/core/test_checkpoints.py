"""Checkpoints of supervised processes: files, their signatures, plain readers, failures."""

from __future__ import annotations

import os
import pickle
import stat
import tempfile
import threading

import dask
import pytest
from distributed import Client
from distributed.utils_test import gen_cluster

import foundation_dask as fd
from foundation_dask.core.plugin import extension
from foundation_dask.core.processes import ProcessError, ProcessStartError, name_key
from foundation_dask.core.processes._checkpoints import checkpoint_path, refused


def touch(path: str) -> str:
    """What a planted pickle runs when it is loaded: it leaves a marker file."""
    with open(path, "w") as f:
        f.write("ran")
    return path


class Planted:
    """Pickles to a call of :func:`touch`: unpickling it runs code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (touch, (self.marker,))


class Counter:
    def __init__(self, start: int = 0):
        self.n = start
        self.failing = False

    def incr(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def lock(self) -> threading.Lock:
        self.n += 1000
        return threading.Lock()

    def break_checkpoints(self, failing: bool = True) -> None:
        self.failing = failing

    def checkpoint(self) -> int:
        if self.failing:
            raise RuntimeError("cannot checkpoint now")
        return self.n

    def restore(self, state: int) -> None:
        self.n = state


class Coordinator:
    """Looks like a trace coordinator to the traces page; its state holds a planted object."""

    def __init__(self, trace_id: str, marker: str):
        self.state = {"trace_id": trace_id, "scope": "cluster", "options": {},
                      "status": "active", "started_at": 1, "completed_at": None,
                      "planted": Planted(marker)}

    def ping(self) -> str:
        return "pong"

    def checkpoint(self) -> dict:
        return self.state

    def restore(self, state: dict) -> None:
        self.state = state


# ---------------------------------------------------------------------------- files


@gen_cluster(client=True, timeout=60)
async def test_planted_pickle_is_refused_and_never_runs(c, s, a, b):
    tmp = tempfile.mkdtemp()
    marker = os.path.join(tmp, "marker")
    with dask.config.set({"foundation.processes.checkpoint-dir": os.path.join(tmp, "ckpt")}):
        await fd.install_plugins(c)
        path = checkpoint_path(name_key("victim"))
        with open(path, "wb") as f:  # what the files were before: a bare pickle
            f.write(pickle.dumps((Planted(marker), [])))
        before = refused["count"]
        with pytest.raises(ProcessStartError, match="not a signed Foundation checkpoint") as e:
            await fd.ProcessManager.start_singleton(Counter, name="victim")
        assert e.value.path == path and "checkpoint-refused: fresh" in str(e.value)
        assert refused["count"] == before + 1
        assert not os.path.exists(marker)
        assert await fd.ProcessManager.lookup("victim") is None


@gen_cluster(client=True, timeout=60)
async def test_flipped_byte_is_refused_fresh_or_fail(c, s, a, b):
    tmp = tempfile.mkdtemp()
    with dask.config.set({"foundation.processes.checkpoint-dir": os.path.join(tmp, "ckpt")}):
        await fd.install_plugins(c)
        h = await fd.ProcessManager.start_singleton(Counter, name="flip")
        for _ in range(3):
            await h.incr()
        path = checkpoint_path(name_key("flip"))
        with open(path, "rb") as f:
            good = f.read()
        await fd.ProcessManager.stop("flip")

        with open(path, "wb") as f:  # the untouched file restores (control)
            f.write(good)
        h = await fd.ProcessManager.start_singleton(Counter, name="flip")
        assert await h.incr() == 4
        await fd.ProcessManager.stop("flip")

        bad = bytearray(good)
        bad[-3] ^= 0x01
        with open(path, "wb") as f:
            f.write(bytes(bad))
        with pytest.raises(ProcessStartError, match="signature that does not match"):
            await fd.ProcessManager.start_singleton(Counter, name="flip")
        with dask.config.set({"foundation.processes.checkpoint-refused": "fresh"}):
            before = refused["count"]
            h = await fd.ProcessManager.start_singleton(Counter, name="flip")
            assert await h.incr() == 1  # started fresh, and the refusal counted
            assert refused["count"] == before + 1


@gen_cluster(client=True, timeout=60)
async def test_files_are_private_and_keyed_outside_the_dir(c, s, a, b):
    tmp = tempfile.mkdtemp()
    directory = os.path.join(tmp, "ckpt")
    with dask.config.set({"foundation.processes.checkpoint-dir": directory}):
        await fd.install_plugins(c)
        h = await fd.ProcessManager.start_singleton(Counter, name="modes")
        await h.incr()
        path = checkpoint_path(name_key("modes"))
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(directory + ".key").st_mode) == 0o600
        assert os.listdir(directory) == [os.path.basename(path)]  # no temporary left


@gen_cluster(client=True, timeout=60)
async def test_directory_writable_by_others_is_refused(c, s, a, b):
    tmp = tempfile.mkdtemp()
    directory = os.path.join(tmp, "shared")
    os.mkdir(directory)
    os.chmod(directory, 0o777)
    with dask.config.set({"foundation.processes.checkpoint-dir": directory}):
        await fd.install_plugins(c)
        with pytest.raises(ProcessStartError, match=f"chmod 700 {directory}"):
            await fd.ProcessManager.start_singleton(Counter, name="open-dir")
        assert await fd.ProcessManager.lookup("open-dir") is None


@gen_cluster(client=True, timeout=60)
async def test_symlinks_in_the_directory_are_not_followed(c, s, a, b):
    tmp = tempfile.mkdtemp()
    directory = os.path.join(tmp, "ckpt")
    target = os.path.join(tmp, "precious")
    with open(target, "w") as f:
        f.write("keep me")
    with dask.config.set({"foundation.processes.checkpoint-dir": directory}):
        await fd.install_plugins(c)
        h = await fd.ProcessManager.start_singleton(Counter, name="links")
        path = checkpoint_path(name_key("links"))
        os.symlink(target, f"{path}.{os.getpid()}.tmp")  # the temporary of before
        await h.incr()
        os.remove(path)
        os.symlink(target, path)  # and the file itself
        assert await h.incr() == 2
        with open(target) as f:
            assert f.read() == "keep me"
        assert not os.path.islink(path)


# ---------------------------------------------------------------------------- readers


@gen_cluster(client=True, timeout=60)
async def test_traces_page_reader_does_not_run_checkpointed_objects(c, s, a, b):
    from foundation_dask.scope._readers import scheduler_traces

    tmp = tempfile.mkdtemp()
    marker = os.path.join(tmp, "marker")
    await fd.install_plugins(c)
    h = await fd.ProcessManager.start_singleton(
        Coordinator, "planted", marker, name=("trace_coordinator", "planted"))
    assert await h.ping() == "pong"  # checkpointed after the call
    rows = scheduler_traces(s)
    assert [r["trace_id"] for r in rows] == ["planted"]
    assert rows[0]["status"] == "active"
    assert not os.path.exists(marker)
    supervisor = extension(s, "processes")
    (_, rec), = supervisor.records_named("trace_coordinator")
    assert supervisor.checkpoint_state(rec)["planted"] is None
    assert not os.path.exists(marker)


# ---------------------------------------------------------------------------- guarantee


@gen_cluster(client=True, timeout=60)
async def test_an_answered_call_is_in_the_supervisors_checkpoint(c, s, a, b):
    await fd.install_plugins(c)
    h = await fd.ProcessManager.start_singleton(Counter, name="acked")
    supervisor = extension(s, "processes")
    key = name_key("acked")
    for i in range(1, 51):
        assert await h.incr() == i
        # read at once, no polling: the answer came after the supervisor kept the state
        assert supervisor.checkpoint_state(supervisor.records[key]) == i
    assert supervisor.records[key].n_checkpoints == 50


# ---------------------------------------------------------------------------- failures


@gen_cluster(client=True, timeout=60)
async def test_unpicklable_result_fails_that_call_alone(c, s, a, b):
    await fd.install_plugins(c)
    h = await fd.ProcessManager.start_singleton(Counter, name="locky")
    with pytest.raises(TypeError, match="cannot be pickled"):
        await h.lock()
    for i in range(1, 40):
        assert await h.incr() == 1000 + i
    info = await h.info()
    assert info["state"] == "running"


@gen_cluster(client=True, timeout=60)
async def test_failing_checkpoint_is_reported_and_calls_answered(c, s, a, b):
    await fd.install_plugins(c)
    sub = await fd.Channels.subscribe("events")
    h = await fd.ProcessManager.start_singleton(Counter, name="flaky")
    await h.incr()
    await h.break_checkpoints()
    assert await h.incr() == 2
    assert await h.incr() == 3
    assert await h.n == 3  # reads too
    frame = await fd.ProcessManager.list_processes()
    row = frame.set_index("name").loc["'flaky'"]
    assert row["state"] == "checkpoint failing"
    assert "cannot checkpoint now" in row["error"]
    msg = await sub.aget(timeout=30)
    assert msg.payload[0] == "checkpoint_failing"
    assert msg.payload[1]["name"] == "'flaky'"

    with dask.config.set({"foundation.processes.checkpoint-errors": "raise"}), \
            pytest.raises(ProcessError, match="cannot checkpoint now"):
        await h.incr()
    await h.break_checkpoints(False)
    assert await h.incr() == 5
    row = (await fd.ProcessManager.list_processes()).set_index("name").loc["'flaky'"]
    assert row["state"] == "running"
    msg = await sub.aget(timeout=30)
    assert msg.payload[0] == "checkpoint_recovered"
    sub.close()


# ---------------------------------------------------------------------------- two clients


@gen_cluster(client=True, timeout=60)
async def test_another_client_cannot_forge_checkpoints_or_destroy(c, s, a, b):
    await fd.install_plugins(c)
    h = await fd.ProcessManager.start_singleton(Counter, name="mine")
    assert await h.incr(5) == 5
    info = await h.info()
    async with Client(s.address, asynchronous=True, set_as_default=False) as other:
        forged = pickle.dumps(999)
        with pytest.raises(PermissionError, match="may write its checkpoint"):
            await other.scheduler.foundation_process_checkpoint(
                name_key=info["name_key"], incarnation=info["incarnation"], state=forged)
        for op in ("foundation_process_destroy", "foundation_process_freeze"):
            with pytest.raises(PermissionError, match="Only the supervisor"):
                await getattr(other.rpc(info["worker"]), op)(actor_key=info["actor_key"])
    assert await h.incr() == 6  # still running, its checkpoint its own
    supervisor = extension(s, "processes")
    assert supervisor.checkpoint_state(supervisor.records[info["name_key"]]) == 6


@gen_cluster(client=True, timeout=60)
async def test_bad_checkpoint_options_are_refused(c, s, a, b):
    await fd.install_plugins(c)

    class Bogus(Counter):
        foundation_checkpoint = "bogus"

    with pytest.raises(ValueError, match="'bogus'"):
        await fd.ProcessManager.start_singleton(Bogus, name="bogus")
    with dask.config.set({"foundation.processes.checkpoint-interval": -5}), \
            pytest.raises(ValueError, match="positive duration"):
        await fd.ProcessManager.start_singleton(Counter, name="negative")
    for mode, interval in (("bogus", 1.0), ("interval", -5)):  # a raw request too
        with pytest.raises(ValueError, match="checkpoint"):
            await c.scheduler.foundation_process_start(
                name_key=name_key("raw"), display="'raw'", spec=b"", class_name="X",
                mode=mode, interval=interval, methods=[], coroutines=[])
    assert await fd.ProcessManager.lookup("negative") is None
    assert await fd.ProcessManager.lookup("raw") is None
