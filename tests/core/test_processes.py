"""Supervised singletons and replicated processes on real clusters."""

from __future__ import annotations

import asyncio
import os
import pickle
import threading

import pytest
from distributed import Client, Worker
from distributed.utils_test import gen_cluster

import foundation_dask as fd
from foundation_dask.core.plugin import extension
from foundation_dask.core.processes import (
    NotOwnerError,
    ProcessError,
    ProcessLostError,
    ProcessNotFoundError,
    ProcessStartError,
    SingletonHandle,
    name_key,
    scheduler_processes,
)
from tests.support import async_wait_for, wait_for, worker_names


class Counter:
    """A counter whose state survives restarts."""

    def __init__(self, start: int = 0):
        self.n = start

    def incr(self, k: int = 1) -> int:
        self.n += k
        return self.n

    async def aincr(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def location(self) -> tuple[int, str]:
        from distributed import get_worker

        return os.getpid(), get_worker().address

    def thread(self) -> str:
        return threading.current_thread().name

    def fail(self) -> None:
        self.n += 100
        raise ValueError("deliberate failure")

    def fail_unpicklably(self) -> None:
        raise LockedError()

    def checkpoint(self) -> int:
        return self.n

    def restore(self, state: int) -> None:
        self.n = state


class LockedError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self):
        super().__init__("holds a lock")
        self.lock = threading.Lock()


class Stateless:
    def __init__(self, tag: str = "x"):
        self.tag = tag

    def get(self) -> str:
        return self.tag


class BrokenInit:
    def __init__(self):
        raise RuntimeError("cannot start")


def live_instances(workers, key: str) -> list[tuple[str, int]]:
    out = []
    for w in workers:
        ext = w.extensions["foundation"].extensions["processes"]
        out += [(w.address, inc) for nk, inc in ext.live().values() if nk == key]
    return out


@gen_cluster(client=True, timeout=60)
async def test_singleton_calls_and_same_name(c, s, a, b):
    await fd.install_plugins(c)
    h = await fd.ProcessManager.start_singleton(Counter, 5, name="counter")
    assert await h.incr() == 6
    assert await h.aincr(2) == 8  # async method on the worker's event loop
    assert await h.n == 8  # attribute read
    assert "Dask-Actor-Threads" in await h.thread()  # sync methods: the actor thread

    again = await fd.ProcessManager.start_singleton(Counter, 100, name="counter")
    assert await again.incr() == 9  # the same instance, not a new one from 100
    assert len(live_instances([a, b], name_key("counter"))) == 1

    found = await fd.ProcessManager.lookup("counter")
    assert await found.incr() == 10
    assert await fd.ProcessManager.lookup("nothing") is None
    assert c._foundation_locations.moved == {}  # nothing kept for calls that are done


@gen_cluster(client=True, timeout=60)
async def test_tuple_names_and_stop(c, s, a, b):
    await fd.install_plugins(c)
    h = await fd.ProcessManager.start_singleton(Stateless, "t1", name=("coordinator", "t1"))
    assert await h.get() == "t1"
    assert await fd.ProcessManager.lookup(("coordinator", "t1")) is not None
    assert await fd.ProcessManager.stop(("coordinator", "t1")) is True
    assert await fd.ProcessManager.lookup(("coordinator", "t1")) is None
    assert live_instances([a, b], name_key(("coordinator", "t1"))) == []
    with pytest.raises(ProcessNotFoundError, match="coordinator"):
        await h.get()
    assert await fd.ProcessManager.stop(("coordinator", "t1")) is False


@gen_cluster(client=True, timeout=60)
async def test_errors_are_clear_and_lose_nothing(c, s, a, b):
    await fd.install_plugins(c)
    with pytest.raises(TypeError, match="take a class"):
        await fd.ProcessManager.start_singleton(Counter(), name="obj")
    with pytest.raises(TypeError, match="cannot be pickled"):
        await fd.ProcessManager.start_singleton(Stateless, threading.Lock(), name="lock")
    with pytest.raises(TypeError, match="process name"):
        await fd.ProcessManager.start_singleton(Stateless, name={"a": 1})
    with pytest.raises(ProcessStartError, match="cannot start"):
        await fd.ProcessManager.start_singleton(BrokenInit, name="broken")
    assert await fd.ProcessManager.lookup("broken") is None

    h = await fd.ProcessManager.start_singleton(Counter, name="c")
    with pytest.raises(ValueError, match="already running as"):
        await fd.ProcessManager.start_singleton(Stateless, name="c")
    with pytest.raises(ValueError, match="deliberate failure"):
        await h.fail()
    # the failed call's state change was kept and the instance still answers
    assert await h.incr() == 101
    with pytest.raises(TypeError, match=r"arguments of 'c'.incr cannot be pickled"):
        await h.incr(threading.Lock())
    with pytest.raises(ProcessError, match="LockedError: holds a lock; that exception cannot"):
        await h.fail_unpicklably()
    assert await h.incr() == 102


@gen_cluster(client=True, timeout=60)
async def test_handle_travels_into_tasks(c, s, a, b):
    await fd.install_plugins(c)
    h = await fd.ProcessManager.start_singleton(Counter, name="shared")
    assert pickle.loads(pickle.dumps(h)).name == "shared"

    def bump(handle, k):
        return handle.incr(k).result()

    results = await c.gather(c.map(bump, [h] * 5, range(1, 6), pure=False))
    assert sorted(results)[-1] == 15
    assert await h.n == 15


@gen_cluster(client=True, timeout=60)
async def test_retire_worker_hands_off(c, s, a, b):
    await fd.install_plugins(c)
    h = await fd.ProcessManager.start_singleton(Counter, name="mover")
    await h.incr(41)
    _, holder = await h.location()
    retired = await c.retire_workers([holder])
    assert holder in retired  # retirement was not refused
    assert await h.incr() == 42  # same state, now on the other worker
    _, now = await h.location()
    assert now != holder
    info = await h.info()
    assert info["incarnation"] >= 1 and info["worker"] == now


@gen_cluster(client=True, timeout=60)
async def test_replicated_on_every_worker_and_late_joiners(c, s, a, b):
    await fd.install_plugins(c)
    hs = await fd.ProcessManager.start_replicated(Counter, name="profiler")
    assert set(hs) == {a.address, b.address}
    places = {w: (await h.location())[1] for w, h in hs.items()}
    assert places == {a.address: a.address, b.address: b.address}

    async with Worker(s.address, nthreads=1) as w:
        hs = await fd.ProcessManager.lookup_replicated("profiler")
        for _ in range(200):
            if w.address in hs:
                break
            await s.loop.run_in_executor(None, threading.Event().wait, 0.05)
            hs = await fd.ProcessManager.lookup_replicated("profiler")
        assert w.address in hs
        assert (await hs[w.address].location())[1] == w.address
    # the instance of a worker that left is gone, not moved
    hs = await fd.ProcessManager.lookup_replicated("profiler")
    assert set(hs) == {a.address, b.address}
    frame = await c.run_on_scheduler(
        lambda dask_scheduler: sorted(
            r.kind for r in dask_scheduler.extensions["foundation"]["processes"].records.values()
        )
    )
    assert frame == ["replica", "replica"]


def spy_sync(client: Client) -> list[str]:
    """The functions ``client.sync`` runs from now on (every ProcessManager call goes
    through ``sync`` of the client it acts through)."""
    used: list[str] = []
    real = client.sync

    def sync(func, *args, **kwargs):
        used.append(getattr(func, "__name__", repr(func)))
        return real(func, *args, **kwargs)

    client.sync = sync
    return used


@gen_cluster(client=True, timeout=60)
async def test_client_argument_picks_the_client(c, s, a, b):
    await fd.install_plugins(c)
    pm = fd.ProcessManager
    async with Client(s.address, asynchronous=True, set_as_default=False) as other:
        via_c, via_other = spy_sync(c), spy_sync(other)
        h = await pm.start_singleton(Counter, 1, name=("pair", "a"), client=other)
        assert await h.incr() == 2
        reps = await pm.start_replicated(Counter, name="pair-reps", client=other)
        assert set(reps) == {a.address, b.address}
        assert await reps[a.address].incr() == 1
        found = await pm.lookup(("pair", "a"), client=other)
        assert await found.incr() == 3
        assert set(await pm.lookup_replicated("pair-reps", client=other)) == set(reps)
        assert [n for n, _ in await pm.find("pair", client=other)] == [("pair", "a")]
        frame = await pm.list_processes(client=other)
        assert sorted(frame["kind"]) == ["replica", "replica", "singleton"]
        assert await pm.stop("pair-reps", client=other) is True
        assert len(via_other) == 7 and via_c == []
        # handles made with client= call through it: its location cache knows them
        assert name_key(("pair", "a")) in other._foundation_locations.cache
        assert getattr(c, "_foundation_locations", None) is None

        # without client=: the current client
        assert await (await pm.lookup(("pair", "a"))).incr() == 4
        assert len(via_c) == 1 and len(via_other) == 7
        assert name_key(("pair", "a")) in c._foundation_locations.cache


@gen_cluster(client=True, timeout=60)
async def test_another_client_cannot_stop_a_process_without_force(c, s, a, b):
    await fd.install_plugins(c)
    pm = fd.ProcessManager
    h = await pm.start_singleton(Counter, 5, name="a-counter")
    reps = await pm.start_replicated(Stateless, "r", name="a-reps")
    async with Client(s.address, asynchronous=True, set_as_default=False) as other:
        for name in ("a-counter", "a-reps"):
            with pytest.raises(NotOwnerError, match="force=True") as info:
                await pm.stop(name, client=other)
            assert isinstance(info.value, PermissionError)
            assert info.value.owner == c.id and c.id in str(info.value)
        assert await h.incr() == 6  # A's singleton keeps answering
        assert await reps[a.address].get() == "r"

        # the same name from B: a handle on the same instance, still A's
        again = await pm.start_singleton(Counter, 100, name="a-counter", client=other)
        assert await again.incr() == 7
        frame = (await pm.list_processes(client=other)).set_index("name")
        assert frame.loc["'a-counter'", "owner"] == c.id
        assert set(frame.loc[frame["kind"] == "replica", "owner"]) == {c.id}
        with pytest.raises(NotOwnerError):
            await pm.stop("a-counter", client=other)

        assert await pm.stop("a-counter", client=other, force=True) is True
        assert await pm.lookup("a-counter") is None
        assert await pm.stop("a-reps") is True  # its owner stops it as before
        assert await pm.lookup("a-reps") is None


@gen_cluster(client=True, timeout=60)
async def test_cluster_owned_processes_are_stopped_by_any_client(c, s, a, b):
    await fd.install_plugins(c)
    pm = fd.ProcessManager
    h = await pm.start_singleton(Counter, name="shared-counter", owner="cluster")
    assert await h.incr() == 1
    await pm.start_replicated(Stateless, name="shared-reps", owner="cluster")
    with pytest.raises(ValueError, match="owner must be None"):
        await pm.start_singleton(Counter, name="bogus-owner", owner=c.id)
    assert await pm.lookup("bogus-owner") is None
    async with Client(s.address, asynchronous=True, set_as_default=False) as other:
        frame = await pm.list_processes(client=other)
        assert set(frame["owner"]) == {"cluster"}
        assert await pm.stop("shared-counter", client=other) is True
        assert await pm.stop("shared-reps", client=other) is True
        left = await pm.start_singleton(Counter, name="left-behind", client=other)
        assert await left.incr() == 1
        gone = other.id
    # its owner has left the cluster: any client stops it, as before
    await async_wait_for(lambda: gone not in s.clients, timeout=30)
    assert await pm.stop("left-behind") is True
    assert (await pm.list_processes()).empty


@gen_cluster(client=True, timeout=60)
async def test_a_process_started_from_a_task_is_owned_by_its_worker(c, s, a, b):
    await fd.install_plugins(c)

    def start_here() -> str:
        from distributed import get_worker

        fd.ProcessManager.start_singleton(Counter, name="task-counter").incr().result()
        return get_worker().address

    address = await c.submit(start_here, workers=[b.address], pure=False)
    frame = await fd.ProcessManager.list_processes()
    assert list(frame["owner"]) == [address]
    with pytest.raises(NotOwnerError) as info:
        await fd.ProcessManager.stop("task-counter")
    assert info.value.owner == address
    assert await fd.ProcessManager.stop("task-counter", force=True) is True


@gen_cluster(client=True, timeout=60)
async def test_lookup_of_a_replicated_name(c, s, a, b):
    await fd.install_plugins(c)
    await fd.ProcessManager.start_replicated(Counter, 3, name="everywhere")
    found = await fd.ProcessManager.lookup("everywhere")
    assert isinstance(found, dict) and set(found) == {a.address, b.address}
    assert found[a.address].name == ("everywhere", a.address)
    assert await found[a.address].incr() == 4
    assert (await found[b.address].location())[1] == b.address
    assert found.keys() == (await fd.ProcessManager.lookup_replicated("everywhere")).keys()

    await fd.ProcessManager.start_singleton(Counter, name="alone")
    assert isinstance(await fd.ProcessManager.lookup("alone"), SingletonHandle)
    assert await fd.ProcessManager.stop("everywhere") is True
    assert await fd.ProcessManager.lookup("everywhere") is None


@gen_cluster(client=True, timeout=60)
async def test_errors_say_which_process_and_worker(c, s, a, b):
    await fd.install_plugins(c)
    with pytest.raises(ProcessStartError) as start:
        await fd.ProcessManager.start_singleton(BrokenInit, name=("broken", 1))
    assert start.value.name == ("broken", 1)
    assert start.value.worker in (a.address, b.address)

    with pytest.raises(ProcessNotFoundError) as missing:
        await fd.ProcessManager.lookup_replicated(("no", "such"))
    assert missing.value.name == ("no", "such")

    h = await fd.ProcessManager.start_singleton(Stateless, name="gone")
    await fd.ProcessManager.stop("gone")
    with pytest.raises(ProcessNotFoundError) as stopped:
        await h.get()
    assert stopped.value.name == "gone"

    async with Worker(s.address, nthreads=1) as w:
        hs = await fd.ProcessManager.start_replicated(Counter, name="short-lived")
        replica = hs[w.address]
        assert await replica.incr() == 1
    with pytest.raises(ProcessLostError) as lost:
        await replica.incr()
    assert lost.value.name == ("short-lived", w.address)
    assert lost.value.worker == w.address


@gen_cluster(client=True, timeout=60)
async def test_scheduler_side_readers(c, s, a, b):
    assert scheduler_processes(s) == []  # no Foundation plugin yet
    await fd.install_plugins(c)
    h = await fd.ProcessManager.start_singleton(Counter, name=("family", "x"))
    await fd.ProcessManager.start_singleton(Stateless, "y", name=("family", "y", 2))
    await fd.ProcessManager.start_singleton(Stateless, name="family")
    await fd.ProcessManager.start_singleton(Stateless, name=("other", "family"))
    await h.incr(5)

    supervisor = extension(s, "processes")
    named = supervisor.records_named("family")
    assert [n for n, _ in named] == [("family", "x"), ("family", "y", 2)]
    assert [rec.key for _, rec in named] == [name_key(n) for n, _ in named]
    assert named[0][1].checkpoint is not None  # the readers decode checkpoints
    assert supervisor.records_named("nobody") == []
    assert [n for n, _ in await fd.ProcessManager.find("family")] == [n for n, _ in named]

    rows = scheduler_processes(s)
    assert [r["name_key"] for r in rows] == list(supervisor.records)
    assert sorted(r["name"] for r in rows) == sorted(
        ["('family', 'x')", "('family', 'y', 2)", "'family'", "('other', 'family')"])


class Holder:
    """Its ``hold`` call stays in flight until ``release`` is set."""

    def __init__(self):
        self.release = asyncio.Event()

    async def hold(self) -> str:
        await self.release.wait()
        return "released"


def forgotten(s, c, keys: set[str]) -> dict[str, list[str]]:
    """What the supervisor of ``s`` and the location cache of ``c`` still keep of ``keys``."""
    supervisor = extension(s, "processes")
    locs = c._foundation_locations
    kept = {
        "records": list(supervisor.records), "groups": list(supervisor.groups),
        "locks": [k for k in keys if k in supervisor.locks],
        "latest": list(locs.latest), "cache": list(locs.cache), "moved": list(locs.moved),
    }
    return {what: [k for k in found if k in keys or k.startswith('["__tuple__","__replica__"')]
            for what, found in kept.items()}


@gen_cluster(client=True, timeout=120)
async def test_stopped_processes_leave_nothing_behind(c, s, a, b):
    await fd.install_plugins(c)
    names = [("many", i) for i in range(200)]
    for i, name in enumerate(names):
        h = await fd.ProcessManager.start_singleton(Counter, i, name=name)
        assert await h.incr() == i + 1  # the client caches its location
        assert await fd.ProcessManager.stop(name) is True
    for i in range(10):
        reps = await fd.ProcessManager.start_replicated(Counter, name=("reps", i))
        assert await reps[a.address].incr() == 1
        assert await fd.ProcessManager.stop(("reps", i)) is True
    keys = {name_key(n) for n in names} | {name_key(("reps", i)) for i in range(10)}
    empty = {"records": [], "groups": [], "locks": [], "latest": [], "cache": [], "moved": []}
    # the client hears of the stops on its stream, a moment after stop() returned
    try:
        await async_wait_for(lambda: forgotten(s, c, keys) == empty)
    finally:
        assert forgotten(s, c, keys) == empty
    supervisor = extension(s, "processes")
    assert len(supervisor.locks) == 0 and supervisor.records == {}
    assert not hasattr(supervisor, "last_incarnation")
    assert supervisor.incarnation_floor > 200  # one number, above every forgotten one
    assert all(not ext.hosts for ext in (w.extensions["foundation"].extensions["processes"]
                                         for w in (a, b)))


@gen_cluster(client=True, timeout=60)
async def test_a_call_in_flight_fails_at_once_when_its_process_is_stopped(c, s, a, b):
    await fd.install_plugins(c)
    h = await fd.ProcessManager.start_singleton(Holder, name="holder")
    info = await h.info()
    host = next(w for w in (a, b) if w.address == info["worker"]).extensions[
        "foundation"].extensions["processes"].hosts[info["actor_key"]]
    pending = asyncio.ensure_future(h.hold())
    await async_wait_for(lambda: host._inflight == 1)  # running on its worker
    try:
        assert await fd.ProcessManager.stop("holder") is True
        # the call would wait for the instance forever: the stop message ends it
        with pytest.raises(ProcessNotFoundError, match="stopped while this call") as err:
            await asyncio.wait_for(pending, 20)
        assert err.value.name == "holder"
        with pytest.raises(ProcessNotFoundError, match="No process named 'holder'"):
            await asyncio.wait_for(h.hold(), 20)
    finally:
        host._instance.release.set()
    assert "holder" not in {r["name"] for r in await c.scheduler.foundation_process_list()}


@gen_cluster(client=True, timeout=60)
async def test_a_handle_follows_its_name_across_stop_and_start(c, s, a, b):
    await fd.install_plugins(c)
    key = name_key("again")
    old = await fd.ProcessManager.start_singleton(Counter, name="again")
    assert await old.incr(5) == 5
    seen = [(await old.info())["incarnation"]]
    stale_loc = dict(c._foundation_locations.cache[key])
    for cycle in range(5):
        assert await fd.ProcessManager.stop("again") is True
        with pytest.raises(ProcessNotFoundError):
            await old.incr()
        new = await fd.ProcessManager.start_singleton(Counter, 10 * cycle, name="again")
        info = await new.info()
        assert info["incarnation"] > seen[-1]  # never an incarnation of before
        seen.append(info["incarnation"])
        # the old handle reaches the new instance (the name), with its incarnation
        assert await old.incr() == 10 * cycle + 1
        assert await new.incr() == 10 * cycle + 2

    # a client that missed every notice still holds the first location: its call is
    # refused there (that instance is gone) and goes on to the current one at once
    locs = c._foundation_locations
    locs.cache[key] = stale_loc
    locs.latest[key] = stale_loc["incarnation"]
    assert await asyncio.wait_for(old.incr(), 20) == 43
    # the current instance refuses a call carrying the first incarnation
    info = await old.info()
    reply = await c.rpc(info["worker"]).foundation_process_call(
        actor_key=info["actor_key"], function="_foundation_call", incarnation=seen[0],
        target="incr", call_id="old-call")
    assert tuple(reply["result"]) == ("stale", info["incarnation"])
    assert await old.n == 43


@gen_cluster(client=True, timeout=60)
async def test_concurrent_starts_of_one_name_share_one_lock(c, s, a, b):
    await fd.install_plugins(c)
    hs = await asyncio.gather(*(fd.ProcessManager.start_singleton(Counter, name="race")
                                for _ in range(10)))
    assert [await h.incr() for h in hs] == list(range(1, 11))  # one instance
    assert len(live_instances([a, b], name_key("race"))) == 1
    supervisor = extension(s, "processes")
    assert len(supervisor.locks) == 0  # no lock kept once nobody holds it
    await asyncio.gather(fd.ProcessManager.stop("race"), fd.ProcessManager.stop("race"))
    assert await fd.ProcessManager.lookup("race") is None and len(supervisor.locks) == 0


# ----------------------------------------------------------------------------------------
# real processes, real SIGKILL


def live_everywhere(client, key: str) -> list[tuple[str, int]]:
    per_worker = client.run(
        lambda dask_worker: list(
            dask_worker.extensions["foundation"].extensions["processes"].live().values()
        )
    )
    return [(w, inc) for w, lst in per_worker.items() for nk, inc in lst if nk == key]


@pytest.mark.timeout(180)
def test_sigkill_restarts_singleton_with_state(fd_client, subprocess_cluster):
    h = fd.ProcessManager.start_singleton(Counter, name="survivor")
    for _ in range(10):
        h.incr().result()
    pid, holder = h.location().result()
    names = {a: n for n, a in worker_names(fd_client).items()}
    subprocess_cluster.kill(names[holder])
    # the handle keeps working, with the checkpointed state, on the other worker
    assert h.incr().result() == 11
    _, now = h.location().result()
    assert now != holder
    assert h.info()["incarnation"] == 1
    assert len(live_everywhere(fd_client, name_key("survivor"))) == 1
    frame = fd.ProcessManager.list_processes()
    row = frame.set_index("name").loc["'survivor'"]
    assert row["restarts"] == 1 and row["state"] == "running"


@pytest.mark.timeout(300)
def test_twenty_kill_cycles_never_two_instances(fd_client, subprocess_cluster):
    h = fd.ProcessManager.start_singleton(Counter, name="phoenix")
    key = name_key("phoenix")
    expected = h.incr().result()
    for cycle in range(20):
        _, holder = h.location().result()
        names = {a: n for n, a in worker_names(fd_client).items()}
        new = subprocess_cluster.add_worker()
        subprocess_cluster.kill(names[holder])
        expected += 1
        assert h.incr().result() == expected, f"cycle {cycle}: state lost or applied twice"
        assert len(live_everywhere(fd_client, key)) == 1, f"cycle {cycle}"
        wait_for(lambda new=new: new in worker_names(fd_client), timeout=60)
    info = h.info()
    assert info["incarnation"] == 20


@pytest.mark.timeout(180)
def test_replicated_reaches_workers_started_later(fd_client, subprocess_cluster):
    hs = fd.ProcessManager.start_replicated(Counter, 7, name="per-worker")
    assert len(hs) == 2
    new = subprocess_cluster.add_worker()
    addr = wait_for(lambda: worker_names(fd_client).get(new), timeout=60)
    hs = wait_for(
        lambda: (d := fd.ProcessManager.lookup_replicated("per-worker")) and addr in d and d
    )
    assert hs[addr].incr().result() == 8
    assert hs[addr].location().result()[1] == addr
    subprocess_cluster.kill(new)
    wait_for(lambda: addr not in fd.ProcessManager.lookup_replicated("per-worker"))


@pytest.mark.timeout(240)
def test_checkpoint_dir_survives_a_whole_cluster_restart(tmp_path):
    from tests.support import SubprocessCluster

    ckpt = tmp_path / "checkpoints"
    first = SubprocessCluster(tmp_path / "one")
    (tmp_path / "one").mkdir()
    first.env["DASK_FOUNDATION__PROCESSES__CHECKPOINT_DIR"] = str(ckpt)
    try:
        first.start(1)
        fd.connect(first.address).wait_for_workers(1, timeout=60)
        h = fd.ProcessManager.start_singleton(Counter, name="durable")
        for _ in range(7):
            h.incr().result()
        assert len(list(ckpt.iterdir())) == 1
    finally:
        fd.close()
        first.close()

    second = SubprocessCluster(tmp_path / "two")
    (tmp_path / "two").mkdir()
    second.env["DASK_FOUNDATION__PROCESSES__CHECKPOINT_DIR"] = str(ckpt)
    try:
        second.start(1)
        fd.connect(second.address).wait_for_workers(1, timeout=60)
        h = fd.ProcessManager.start_singleton(Counter, name="durable")
        assert h.incr().result() == 8  # went on from its last checkpoint
        assert fd.ProcessManager.stop("durable")
        assert list(ckpt.iterdir()) == []  # stopping forgets it
    finally:
        fd.close()
        second.close()
