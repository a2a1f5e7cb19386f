"""The LM call cache: a hit from this host's disk against a hit from the cluster's cache.

Run: ``python benchmarks/bench_lm_cache.py [--keys 2000]``

On an embedded cluster of two worker processes, each with a disk cache of its own (as
two hosts have), one worker stores ``--keys`` results of about 1 KiB (each goes to its
disk cache and to the cluster cache on the scheduler). Then, in the same run:

* disk hit: that worker reads them back from its own disk cache (the baseline);
* cluster hit: the other worker, whose disk cache is empty, reads them through the
  cluster cache (one round trip to the scheduler each, then written to its disk);
* both workers at once, their disk caches emptied, read the rest through the cluster
  cache: hits per second.

Printed: median and p95 latency per hit, hits/s, and the ratio cluster/disk. A cluster
hit costs a round trip; a model call it saves costs 100-1000 ms (a remote API, or the
local model).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import dask.config

import foundation_dask as fd


def _setup(directory: str) -> str:
    dask.config.set({"foundation.dspex.cache-dir": directory})
    from distributed import get_worker
    return get_worker().address


def _store(n: int) -> int:
    from foundation_dask.dspex.lm import cache
    for i in range(n):
        cache.store(f"bench-{i}", {"outputs": ["x" * 1000], "i": i})
    return n


def _read(n: int, offset: int = 0) -> list[float]:
    from foundation_dask.dspex.lm import cache
    out = []
    for i in range(offset, offset + n):
        t0 = time.perf_counter()
        value = cache.lookup(f"bench-{i}")
        out.append(time.perf_counter() - t0)
        assert value is not None and value["i"] == i, i
    return out


def _forget() -> int:
    from foundation_dask.dspex.lm import cache
    return cache.get_cache().clear()


def _summary(label: str, times: list[float]) -> float:
    times = sorted(times)
    med = statistics.median(times)
    p95 = times[int(0.95 * (len(times) - 1))]
    print(f"{label:<34} median {med * 1e3:7.3f} ms  p95 {p95 * 1e3:7.3f} ms  "
          f"{len(times) / sum(times):9.0f} hits/s")
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=2000)
    args = parser.parse_args()
    n = args.keys
    client = fd.connect(n_workers=2, threads_per_worker=1)
    try:
        client.wait_for_workers(2, timeout=60)
        a, b = sorted(client.scheduler_info()["workers"])
        with tempfile.TemporaryDirectory() as da, tempfile.TemporaryDirectory() as db:
            client.submit(_setup, da, workers=[a], pure=False).result()
            client.submit(_setup, db, workers=[b], pure=False).result()
            client.submit(_store, n, workers=[a], pure=False).result()
            time.sleep(0.5)  # the puts travel on the batched stream
            disk = client.submit(_read, n, workers=[a], pure=False).result()
            half = n // 2
            cluster = client.submit(_read, half, workers=[b], pure=False).result()
            client.run(_forget)  # both disks forget: the rest comes from the cluster
            t0 = time.perf_counter()
            both = client.gather([
                client.submit(_read, n - half, half, workers=[b], pure=False),
                client.submit(_read, n - half, half, workers=[a], pure=False)])
            wall = time.perf_counter() - t0
        print(f"LM cache hits, {n} keys of ~1 KiB, 2 worker processes")
        d = _summary("disk hit (own host, baseline)", disk)
        c = _summary("cluster hit (other host)", cluster)
        _summary("cluster hit, 2 workers at once", both[0] + both[1])
        print(f"two workers together: {2 * (n - half) / wall:.0f} hits/s")
        print(f"ratio cluster hit / disk hit: {c / d:.2f}x")
    finally:
        fd.close()


if __name__ == "__main__":
    main()
