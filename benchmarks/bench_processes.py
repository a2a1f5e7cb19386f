"""Singleton call latency and failover time, against plain Dask Actors in the same run.

Run: ``python benchmarks/bench_processes.py [--calls 2000] [--kills 5]``

Prints the median and p99 latency of a method call through a ``SingletonHandle``
(with a checkpoint after every call, and without) next to a plain Dask Actor call
(targets: a checkpointed call within 1.5 ms and 1.15 times the plain call),
and the time from SIGKILL of the worker holding a singleton to the first answered
call (with its state), next to recovering a plain Dask Actor by hand (notice the
failure, submit a new actor, call it; its state is lost).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time

import foundation_dask as fd


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def pid(self) -> int:
        return os.getpid()


class CheckpointedCounter(Counter):
    def checkpoint(self) -> int:
        return self.n

    def restore(self, state: int) -> None:
        self.n = state


def latencies(call, n: int) -> tuple[float, float]:
    for _ in range(50):  # warm up connections
        call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(0.99 * (n - 1))] * 1e3


def wait_workers(client, n: int) -> None:
    client.wait_for_workers(n, timeout=120)


def failover_singleton(client, kills: int) -> list[float]:
    h = fd.ProcessManager.start_singleton(CheckpointedCounter, name="bench-failover")
    times = []
    for _ in range(kills):
        wait_workers(client, 2)
        before = h.incr().result()
        t0 = time.perf_counter()
        os.kill(h.pid().result(), signal.SIGKILL)
        after = h.incr().result()
        times.append(time.perf_counter() - t0)
        assert after == before + 1, (before, after)
    fd.ProcessManager.stop("bench-failover")
    return times


def failover_plain_actor(client, kills: int) -> list[float]:
    times = []
    for _ in range(kills):
        wait_workers(client, 2)
        actor = client.submit(Counter, actor=True, pure=False).result()
        actor.incr().result()
        t0 = time.perf_counter()
        os.kill(actor.pid().result(), signal.SIGKILL)
        while True:
            try:
                actor.incr().result()
                # the call may still reach a dying worker; keep going until it fails
                continue
            except Exception:
                break
        while True:
            try:
                actor = client.submit(Counter, actor=True, pure=False).result()
                actor.incr().result()
                break
            except Exception:
                continue
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()

    client = fd.connect(n_workers=2, threads_per_worker=1)
    try:
        plain = client.submit(Counter, actor=True).result()
        base = latencies(lambda: plain.incr().result(), args.calls)
        h0 = fd.ProcessManager.start_singleton(Counter, name="bench-nockpt")
        h1 = fd.ProcessManager.start_singleton(CheckpointedCounter, name="bench-ckpt")
        nock = latencies(lambda: h0.incr().result(), args.calls)
        ckpt = latencies(lambda: h1.incr().result(), args.calls)
        print(f"call latency over {args.calls} calls (ms)      median     p99   median ratio")
        print(f"  plain Dask Actor                         {base[0]:7.3f} {base[1]:7.3f}   1.00")
        print(f"  singleton, no checkpoint                 {nock[0]:7.3f} {nock[1]:7.3f}"
              f"   {nock[0] / base[0]:.2f}")
        print(f"  singleton, checkpoint after each call    {ckpt[0]:7.3f} {ckpt[1]:7.3f}"
              f"   {ckpt[0] / base[0]:.2f}")
        within = ckpt[0] <= 1.15 * base[0]
        print(f"  target: median <= 1.5 ms -> {'met' if ckpt[0] <= 1.5 else 'NOT met'}; "
              f"checkpointed / plain <= 1.15 -> {'met' if within else 'NOT met'}")
        print(f"  the checkpoint's own cost (checkpointed - no checkpoint): "
              f"{ckpt[0] - nock[0]:.3f} ms (a worker -> scheduler round trip, before the reply)")

        fo = failover_singleton(client, args.kills)
        manual = failover_plain_actor(client, args.kills)
        fo_med, man_med = statistics.median(fo), statistics.median(manual)
        print(f"failover, SIGKILL -> first answered call ({args.kills} kills, s)")
        print(f"  singleton (state kept)          median {fo_med:.3f}  max {max(fo):.3f}")
        print(f"  plain Actor by hand (state lost) median {man_med:.3f}  max {max(manual):.3f}")
        print(f"  ratio singleton / by hand: {fo_med / man_med:.2f}; "
              f"target < 0.5 s -> {'met' if max(fo) < 0.5 else 'NOT met'}")
    finally:
        fd.close()


if __name__ == "__main__":
    main()
