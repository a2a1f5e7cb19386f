"""ProcessRegistry and ServiceMesh on real clusters."""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import namedtuple
from collections.abc import Awaitable, Callable
from typing import Any

import distributed
import pandas as pd
import pytest
from distributed.protocol import pickle
from distributed.utils_test import captured_logger, gen_cluster

import foundation_dask as fd
from foundation_dask.core.registry import (
    AlreadyRegisteredError,
    NotOwnerError,
    NotRegisteredError,
    RegistryEntry,
    Service,
    canonical_key,
)
from tests._helpers import Counter
from tests.support import wait_for, worker_names


async def poll(check: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Await ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def register_from_task(key: Any, value: Any) -> str:
    fd.ProcessRegistry.register(key, value, metadata={"origin": "task"})
    return distributed.get_worker().address


def lookup_from_task(key: Any) -> Any:
    entry = fd.ProcessRegistry.lookup(key)
    return None if entry is None else (entry.value, entry.owner)


Point = namedtuple("Point", "x y")


class Colour(enum.Enum):
    RED = 1


# ------------------------------------------------------------------ key canonical form


@pytest.mark.timeout(10)
def test_canonical_key_distinguishes_types_and_ignores_set_order() -> None:
    assert canonical_key(("a", 1)) == canonical_key(("a", 1)) == "('a', 1)"
    assert len({canonical_key(k) for k in [("a", 1), ("a", 1.0), ("a", True), "a"]}) == 4
    assert canonical_key(frozenset({"x", "y", "z"})) == canonical_key(frozenset({"z", "y", "x"}))
    assert canonical_key(("one",)) != canonical_key("one")
    assert canonical_key(Point(1, 2)) != canonical_key((1, 2))
    assert canonical_key(Colour.RED).endswith("Colour.RED")
    with pytest.raises(TypeError, match="hashable"):
        canonical_key(("a", [1]))


# ------------------------------------------------------------------ in-process cluster


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_register_lookup_unregister_tuple_key(c, s, a, b) -> None:
    await fd.install_plugins(c)
    key = ("trace_metadata", "abc-123")
    entry = await fd.ProcessRegistry.register(key, {"span": 7}, metadata={"kind": "trace"})
    assert isinstance(entry, RegistryEntry)
    assert entry.owner == c.id

    found = await fd.ProcessRegistry.lookup(("trace_metadata", "abc-123"))
    assert found is not None
    assert found.key == key and isinstance(found.key, tuple)
    assert found.value == {"span": 7}
    assert found.metadata == {"kind": "trace"}
    assert found.owner == c.id
    assert abs(found.registered_at - time.time()) < 60
    assert "trace_metadata" in repr(found)

    assert await fd.ProcessRegistry.lookup(("trace_metadata", "other")) is None

    # the same tuple key is found from tasks on both workers
    for w in (a, b):
        got = await c.submit(lookup_from_task, key, workers=[w.address], pure=False)
        assert got == ({"span": 7}, c.id)

    await fd.ProcessRegistry.unregister(key)
    assert await fd.ProcessRegistry.lookup(key) is None
    with pytest.raises(KeyError, match="abc-123.*not registered") as info:
        await fd.ProcessRegistry.unregister(key)
    assert isinstance(info.value, NotRegisteredError)


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_register_from_task_is_owned_by_worker(c, s, a, b) -> None:
    await fd.install_plugins(c)
    key = ("job", 1)
    address = await c.submit(register_from_task, key, [1, 2, 3], workers=[a.address])
    assert address == a.address

    entry = await fd.ProcessRegistry.lookup(("job", 1))
    assert entry is not None
    assert entry.value == [1, 2, 3]
    assert entry.owner == a.address
    assert entry.metadata == {"origin": "task"}
    assert [e.key for e in await fd.ProcessRegistry.select(owner=a.address)] == [key]

    # the worker leaves: its entries go with it, the client's stay
    await fd.ProcessRegistry.register("client-key", 1)
    await a.close()

    async def gone() -> bool:
        return await fd.ProcessRegistry.lookup(key) is None

    await poll(gone)
    assert (await fd.ProcessRegistry.lookup("client-key")).value == 1
    assert s.extensions["foundation"]["registry"].count_owned_by(a.address) == 0


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_conflict_and_replace(c, s, a, b) -> None:
    await fd.install_plugins(c)
    key = ("singleton", "counter")
    await fd.ProcessRegistry.register(key, "first")
    with pytest.raises(ValueError, match=r"\('singleton', 'counter'\).*already registered") as info:
        await fd.ProcessRegistry.register(key, "second")
    assert isinstance(info.value, AlreadyRegisteredError)
    assert c.id in str(info.value)
    assert (await fd.ProcessRegistry.lookup(key)).value == "first"

    # a task on a worker takes it over with replace=True and force=True: owner changes
    def take_over(force: bool) -> str:
        fd.ProcessRegistry.register(("singleton", "counter"), "second", replace=True,
                                    force=force)
        return distributed.get_worker().address

    with pytest.raises(NotOwnerError, match="force=True") as info:
        await c.submit(take_over, False, workers=[b.address], pure=False)
    assert info.value.owner == c.id
    address = await c.submit(take_over, True, workers=[b.address], pure=False)
    entry = await fd.ProcessRegistry.lookup(key)
    assert (entry.value, entry.owner) == ("second", address)
    assert s.extensions["foundation"]["registry"].count_owned_by(c.id) == 0


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_select_by_metadata(c, s, a, b) -> None:
    await fd.install_plugins(c)
    await fd.ProcessRegistry.register("a", 1, metadata={"kind": "cache", "tier": 1})
    await fd.ProcessRegistry.register("b", 2, metadata={"kind": "cache", "tier": 2})
    await fd.ProcessRegistry.register("c", 3, metadata={"kind": "worker", "flag": True})
    await fd.ProcessRegistry.register("d", 4, metadata={"kind": "worker", "flag": 1})

    keys = [e.key for e in await fd.ProcessRegistry.select({"kind": "cache"})]
    assert keys == ["a", "b"]
    assert [e.key for e in await fd.ProcessRegistry.select({"kind": "cache", "tier": 2})] == ["b"]
    assert [e.key for e in await fd.ProcessRegistry.select({"flag": True})] == ["c"]
    assert [e.key for e in await fd.ProcessRegistry.select({"flag": 1})] == ["d"]
    assert await fd.ProcessRegistry.select({"kind": "none"}) == []
    assert len(await fd.ProcessRegistry.select()) == 4


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_bad_input_registers_nothing(c, s, a, b) -> None:
    await fd.install_plugins(c)
    with pytest.raises(TypeError, match="hashable"):
        await fd.ProcessRegistry.register(["not", "hashable"], 1)
    with pytest.raises(TypeError, match="metadata must be a dict"):
        await fd.ProcessRegistry.register("k", 1, metadata=[("a", 1)])
    with pytest.raises(TypeError, match=r"metadata\['a'\] must be a str"):
        await fd.ProcessRegistry.register("k", 1, metadata={"a": [1, 2]})
    with pytest.raises(TypeError, match="metadata keys must be str"):
        await fd.ProcessRegistry.register("k", 1, metadata={1: "a"})
    with pytest.raises(TypeError, match="capabilities must be a list"):
        await fd.ServiceMesh.register_service("svc", None, capabilities="embed")
    with pytest.raises(TypeError, match="capabilities must be str"):
        await fd.ServiceMesh.register_service("svc", None, capabilities=["embed", 3])
    with pytest.raises(TypeError, match="metadata"):
        await fd.ServiceMesh.register_service("svc", None, metadata={"x": {"nested": 1}})
    with pytest.raises(ValueError, match="owner must be None .* or 'cluster'"):
        await fd.ProcessRegistry.register("k", 1, owner="tcp://127.0.0.1:1")
    with pytest.raises(TypeError, match="registered under 'lock' cannot be pickled"):
        await fd.ProcessRegistry.register("lock", threading.Lock())
    with pytest.raises(TypeError, match="handle registered under 'svc' cannot be pickled"):
        await fd.ServiceMesh.register_service("svc", threading.Lock())

    assert await fd.ProcessRegistry.select() == []
    assert await fd.ServiceMesh.discover_services() == []
    ext = s.extensions["foundation"]["registry"]
    assert ext.entries == {} and ext.services == {} and not ext.owned


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_service_discovery_filters(c, s, a, b) -> None:
    await fd.install_plugins(c)
    mesh = fd.ServiceMesh
    await mesh.register_service("embedder", ("tcp", 1), capabilities=["embed", "batch"],
                                metadata={"model": "small", "gpu": False})
    await mesh.register_service("embedder-xl", ("tcp", 2), capabilities=["embed"],
                                metadata={"model": "large", "gpu": True})
    await mesh.register_service(("llm", 0), {"url": "x"}, capabilities=["generate"],
                                metadata={"model": "large"})

    names = [s.name for s in await mesh.discover_services(capabilities=["embed"])]
    assert names == ["embedder", "embedder-xl"]
    assert [s.name for s in await mesh.discover_services(capabilities=["embed", "batch"])] == [
        "embedder"
    ]
    assert await mesh.discover_services(capabilities=["embed", "generate"]) == []
    large = await mesh.discover_services(metadata={"model": "large"})
    assert [s.name for s in large] == ["embedder-xl", ("llm", 0)]
    gpu = await mesh.discover_services(capabilities=["embed"], metadata={"gpu": True})
    assert [s.name for s in gpu] == ["embedder-xl"]

    [llm] = await mesh.discover_services(name=("llm", 0))
    assert isinstance(llm, Service)
    assert llm.handle == {"url": "x"}
    assert llm.capabilities == ["generate"]
    assert llm.owner == c.id
    assert "generate" in repr(llm)
    assert await mesh.discover_services(name="nope") == []

    with pytest.raises(AlreadyRegisteredError, match="service 'embedder'"):
        await mesh.register_service("embedder", None)

    frame = await mesh.services_frame(capabilities=["embed"])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == [
        "name", "capabilities", "metadata", "owner", "registered_at", "handle"
    ]
    assert frame["name"].tolist() == ["embedder", "embedder-xl"]

    await mesh.deregister_service("embedder")
    assert [s.name for s in await mesh.discover_services(capabilities=["embed"])] == [
        "embedder-xl"
    ]
    with pytest.raises(KeyError, match="service 'embedder' is not registered"):
        await mesh.deregister_service("embedder")
    # services and registry entries are separate namespaces
    assert await fd.ProcessRegistry.lookup("embedder-xl") is None


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_actor_handle_round_trips(c, s, a, b) -> None:
    await fd.install_plugins(c)
    actor = await c.submit(Counter, actor=True, workers=[a.address])
    await fd.ServiceMesh.register_service("counter", actor, capabilities=["count"])
    [service] = await fd.ServiceMesh.discover_services(capabilities=["count"])
    assert isinstance(service.handle, distributed.Actor)
    assert await service.handle.incr() == 1
    assert await actor.incr() == 2


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_closed_client_loses_entries(c, s, a, b) -> None:
    await fd.install_plugins(c)
    async with distributed.Client(s.address, asynchronous=True, set_as_default=False) as c2:
        await fd.ProcessRegistry.register(("owned", "by", "c2"), 1, client=c2)
        await fd.ServiceMesh.register_service("c2-service", None, client=c2)
        entry = await fd.ProcessRegistry.lookup(("owned", "by", "c2"))
        assert entry.owner == c2.id != c.id
    assert c2.status == "closed"

    async def gone() -> bool:
        lookup = await fd.ProcessRegistry.lookup(("owned", "by", "c2"))
        return lookup is None and await fd.ServiceMesh.discover_services() == []

    await poll(gone)


# ------------------------------------------------------------------ subprocess cluster


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkilled_worker_entries_and_services_vanish(fd_client, subprocess_cluster) -> None:
    names = worker_names(fd_client)

    def register(tag: str) -> str:
        import distributed

        import foundation_dask as fd

        fd.ProcessRegistry.register(("job", tag), {"tag": tag})
        fd.ServiceMesh.register_service(f"svc-{tag}", ("handle", tag), capabilities=["work"])
        return distributed.get_worker().address

    for name, address in names.items():
        assert fd_client.submit(register, name, workers=[address], pure=False).result() == address

    assert fd.ProcessRegistry.lookup(("job", "w0")).owner == names["w0"]
    assert len(fd.ServiceMesh.discover_services(capabilities=["work"])) == 2

    subprocess_cluster.kill("w0")
    wait_for(lambda: fd.ProcessRegistry.lookup(("job", "w0")) is None)
    wait_for(lambda: fd.ServiceMesh.discover_services(name="svc-w0") == [])

    survivor = fd.ProcessRegistry.lookup(("job", "w1"))
    assert survivor is not None and survivor.owner == names["w1"]
    [service] = fd.ServiceMesh.discover_services(capabilities=["work"])
    assert (service.name, service.handle) == ("svc-w1", ("handle", "w1"))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_second_client_entries_vanish_when_it_closes(fd_client, subprocess_cluster) -> None:
    c2 = distributed.Client(subprocess_cluster.address, set_as_default=False)
    try:
        fd.ProcessRegistry.register(("session", 2), "state", metadata={"n": 2}, client=c2)
        entry = fd.ProcessRegistry.lookup(("session", 2))
        assert entry is not None and entry.owner == c2.id

        def look() -> Any:
            import foundation_dask as fd

            e = fd.ProcessRegistry.lookup(("session", 2))
            return None if e is None else (e.key, e.value, e.owner)

        # a tuple key registered by a client, found from a task in another process
        assert fd_client.submit(look, pure=False).result() == (("session", 2), "state", c2.id)
    finally:
        c2.close()
    wait_for(lambda: fd.ProcessRegistry.lookup(("session", 2)) is None)


# ------------------------------------------------------------------ owners


@pytest.mark.timeout(90)
@gen_cluster(client=True)
async def test_clients_cannot_undo_each_other(c, s, a, b) -> None:
    await fd.install_plugins(c)
    reg, mesh = fd.ProcessRegistry, fd.ServiceMesh
    client_a = await distributed.Client(s.address, asynchronous=True, set_as_default=False)
    client_b = await distributed.Client(s.address, asynchronous=True, set_as_default=False)
    try:
        await reg.register("shared", "A's", client=client_a)
        await mesh.register_service("svc", "A's handle", client=client_a)

        # B can neither replace nor remove A's entry and service without force=True
        with pytest.raises(NotOwnerError, match=f"owned by {client_a.id}") as info:
            await reg.register("shared", "B's", replace=True, client=client_b)
        assert info.value.owner == client_a.id
        with pytest.raises(NotOwnerError, match=f"owned by {client_a.id}"):
            await mesh.register_service("svc", "B's", replace=True, client=client_b)
        with pytest.raises(NotOwnerError, match=f"registered by {client_a.id}.*force=True"):
            await reg.unregister("shared", client=client_b)
        with pytest.raises(NotOwnerError, match=f"registered by {client_a.id}.*force=True"):
            await mesh.deregister_service("svc", client=client_b)
        assert (await reg.lookup("shared")).value == "A's"

        # nor register in A's name: the owner in a request body is refused
        reply = await client_b.scheduler.foundation_registry_register(
            kind="entry", key_id="'forged'", key=pickle.dumps("forged"),
            value=pickle.dumps(1), owner=client_a.id)
        assert "cannot name its owner" in reply["error"]["message"]
        reply = await client_b.scheduler.foundation_registry_register(
            kind="entry", key_id="'forged'", key=pickle.dumps("forged"), value=pickle.dumps(1),
            token="made-up")
        assert reply["identify"] and await reg.lookup("forged") is None

        # A may replace its own entry; B takes both over with force=True
        await reg.register("shared", "A's again", replace=True, client=client_a)
        entry = await reg.register("shared", "B's", replace=True, force=True, client=client_b)
        assert entry.owner == client_b.id
        await mesh.register_service("svc", "B's", replace=True, force=True, client=client_b)
        with pytest.raises(NotOwnerError, match=f"registered by {client_b.id}"):
            await reg.unregister("shared", client=client_a)

        # A leaves: what B took over stays; B leaves: it goes
        await client_a.close()
        await poll(lambda: asyncio.sleep(0, result=client_a.id not in s.clients))
        assert (await reg.lookup("shared")).owner == client_b.id
        [svc] = await mesh.discover_services(name="svc")
        assert (svc.handle, svc.owner) == ("B's", client_b.id)
        await client_b.close()

        async def gone() -> bool:
            return (await reg.lookup("shared") is None
                    and await mesh.discover_services(name="svc") == [])

        await poll(gone)
    finally:
        await client_a.close()
        await client_b.close()


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_cluster_owned_entry_outlives_its_client(c, s, a, b) -> None:
    await fd.install_plugins(c)
    async with distributed.Client(s.address, asynchronous=True, set_as_default=False) as c2:
        entry = await fd.ProcessRegistry.register("config", {"v": 1}, owner="cluster",
                                                  client=c2)
        assert entry.owner == "cluster"
    await poll(lambda: asyncio.sleep(0, result=c2.id not in s.clients))
    assert (await fd.ProcessRegistry.lookup("config")).value == {"v": 1}
    with pytest.raises(NotOwnerError, match="owned by cluster"):
        await fd.ProcessRegistry.register("config", {"v": 2}, replace=True)
    with pytest.raises(NotOwnerError, match="registered by cluster"):
        await fd.ProcessRegistry.unregister("config")
    await fd.ProcessRegistry.unregister("config", force=True)
    assert await fd.ProcessRegistry.lookup("config") is None


# ------------------------------------------------------------------ values that cannot be read


def _refuse_to_load() -> None:
    raise RuntimeError("this value cannot be loaded here")


class LoadsNowhere:
    """Pickles fine, fails when unpickled."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_load, ())


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_one_unreadable_value_does_not_break_discovery(c, s, a, b) -> None:
    await fd.install_plugins(c)
    await fd.ServiceMesh.register_service("good", ("tcp", 1), capabilities=["x"])
    await fd.ServiceMesh.register_service("bad", LoadsNowhere(), capabilities=["x"])
    await fd.ProcessRegistry.register("good-entry", 1)
    await fd.ProcessRegistry.register("bad-entry", LoadsNowhere())

    with pytest.warns(RuntimeWarning, match="'bad'.*cannot be unpickled"):
        good, bad = await fd.ServiceMesh.discover_services(capabilities=["x"])
    assert (good.name, good.handle) == ("good", ("tcp", 1))
    assert bad.name == "bad" and isinstance(bad.handle, fd.core.registry.UnreadableValue)
    assert "cannot be loaded here" in bad.handle.error
    with pytest.warns(RuntimeWarning, match="'bad'"):
        frame = await fd.ServiceMesh.services_frame()
    assert frame["name"].tolist() == ["good", "bad"]
    with pytest.warns(RuntimeWarning, match="'bad-entry'"):
        entries = await fd.ProcessRegistry.select()
    assert [e.key for e in entries] == ["good-entry", "bad-entry"]
    assert entries[0].value == 1


@pytest.mark.timeout(60)
@gen_cluster(client=True)
async def test_raw_request_with_unknown_kind_is_a_clear_error(c, s, a, b) -> None:
    await fd.install_plugins(c)
    with captured_logger("distributed.core") as log:
        reply = await c.scheduler.foundation_registry_lookup(kind="bogus", key_id="'x'")
        select = await c.scheduler.foundation_registry_select(kind=3)
    assert reply["error"]["type"] == "ValueError"
    assert "kind must be one of ['entry', 'service'], got 'bogus'" in reply["error"]["message"]
    assert "got 3" in select["error"]["message"]
    assert "Exception while handling op" not in log.getvalue()
