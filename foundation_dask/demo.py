"""``foundation-dask demo``: a guided tour of the toolkit on the embedded cluster.

Each step prints what it does and what it measured. The classes and functions here
run on the workers, so they live in an importable module.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import foundation_dask as fd


class KeyValueStore:
    """A tiny supervised key-value store: its state survives worker deaths."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.writes = 0

    def put(self, key: str, value: Any) -> int:
        self.data[key] = value
        self.writes += 1
        return self.writes

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def where(self) -> tuple[str, int]:
        from distributed import get_worker

        return get_worker().address, os.getpid()

    def checkpoint(self) -> dict[str, Any]:
        return {"data": self.data, "writes": self.writes}

    def restore(self, state: dict[str, Any]) -> None:
        self.data = state["data"]
        self.writes = state["writes"]


def publish_from_worker(i: int) -> str:
    """A task that reports progress on the telemetry channel."""
    from distributed import get_worker

    addr = get_worker().address
    fd.Channels.broadcast("telemetry", {"task": i, "worker": addr, "progress": 1.0})
    return addr


class _Printer:
    def __init__(self, out: Callable[[str], None]):
        self.out = out
        self.t0 = time.perf_counter()
        self.step = 0

    def header(self, title: str) -> None:
        self.step += 1
        self.out(f"\n[{time.perf_counter() - self.t0:6.1f}s] {self.step}. {title}")

    def line(self, text: str) -> None:
        self.out(f"    {text}")


def run_demo(*, n_workers: int = 2, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the Foundation tour; return the figures it printed.

    Parameters
    ----------
    n_workers
        Worker processes of the embedded cluster.
    out
        Where the text goes (``print`` by default).
    """
    p = _Printer(out)
    summary: dict[str, Any] = {}
    p.header("Zero-config cluster: foundation_dask.connect()")
    client = fd.connect(n_workers=n_workers, silence_logs=logging.ERROR)
    try:
        client.wait_for_workers(n_workers, timeout=120)
        p.line(f"scheduler {client.scheduler.address}, {n_workers} worker processes")
        p.line(f"Dask dashboard: {client.dashboard_link}")

        p.header("Supervised singleton: one live KeyValueStore named 'kv'")
        kv = fd.ProcessManager.start_singleton(KeyValueStore, name="kv")
        for i in range(10):
            kv.put(f"k{i}", i * i).result()
        holder, pid = kv.where().result()
        p.line(f"10 writes; it lives on {holder} (pid {pid})")
        same = fd.ProcessManager.start_singleton(KeyValueStore, name="kv")
        p.line(f"starting 'kv' again returns the same instance: get('k3') = "
               f"{same.get('k3').result()}")

        p.header("Failover: SIGKILL the worker process holding 'kv'")
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        value = kv.get("k9").result()
        failover = time.perf_counter() - t0
        now, _ = kv.where().result()
        info = kv.info()
        p.line(f"first answered call after the kill: {failover * 1000:.0f} ms, "
               f"get('k9') = {value} (state restored from its last checkpoint)")
        p.line(f"now on {now}, incarnation {info['incarnation']}")
        summary["failover_s"] = failover
        summary["state_kept"] = value == 81

        p.header("Channels: control / events / telemetry / data")
        with fd.Channels.subscribe("telemetry") as sub:
            client.wait_for_workers(n_workers, timeout=120)
            workers = client.gather(client.map(publish_from_worker, range(6), pure=False))
            got = [sub.get(timeout=10) for _ in range(6)]
        p.line(f"6 tasks on {len(set(workers))} workers broadcast on 'telemetry'; "
               f"the notebook received {len(got)}, in order per publisher")
        with fd.Channels.subscribe("control") as control:
            fd.Channels.route_message(("start_trace", "t-1", "demo"), priority="high")
            msg = control.get(timeout=10)
        p.line(f"route_message(..., priority='high') arrived on '{msg.channel}': {msg.payload}")

        p.header("Service mesh: register and discover by capability")
        fd.ServiceMesh.register_service(
            "kv-store", kv, capabilities=["storage", "kv"], metadata={"tier": "demo"}
        )
        found = fd.ServiceMesh.discover_services(capabilities=["kv"], metadata={"tier": "demo"})
        p.line(f"discover_services(capabilities=['kv']) -> {[s.name for s in found]}")
        p.line(f"through the discovered handle: get('k1') = {found[0].handle.get('k1').result()}")

        p.header("Cluster health")
        client.wait_for_workers(n_workers, timeout=120)
        deadline = time.monotonic() + 15  # a restarted worker reports after its heartbeat
        while True:
            health = fd.HealthMonitor.get_cluster_health()
            frame = health.to_frame()
            if frame["load_avg"].notna().all() or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        cols = [c for c in ("node", "status", "cpu", "memory", "load_avg", "cores",
                            "process_count") if c in frame.columns]
        for text in frame[cols].to_string(index=False).splitlines():
            p.line(text)
        summary["nodes"] = health.cluster.connected_nodes

        p.header("Supervised processes")
        for text in fd.ProcessManager.list_processes()[
            ["name", "kind", "worker", "state", "incarnation", "restarts"]
        ].to_string(index=False).splitlines():
            p.line(text)
        p.header(f"Done in {time.perf_counter() - p.t0:.1f}s")
    finally:
        fd.close()
    return summary
