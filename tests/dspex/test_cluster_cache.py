"""One LM cache for the cluster: a call answered on one host is not made again on another,
also after every worker that made it is gone."""

from __future__ import annotations

import pytest

import foundation_dask as fd
from foundation_dask import dspex
from foundation_dask.core.plugin import extension
from tests._helpers import Classify, counted_needs_demos, lm_calls_on_workers, make_examples, metric


def _cache_info(dask_scheduler) -> dict:
    return extension(dask_scheduler, "lm-cache").info()


@pytest.mark.timeout(300)
def test_hosts_with_their_own_disk_cache_share_the_cluster_cache(subprocess_cluster, tmp_path):
    subprocess_cluster.start(0)

    def host(name: str) -> None:  # a worker whose machine has its own disk cache
        subprocess_cluster.env["DASK_FOUNDATION__DSPEX__CACHE_DIR"] = str(tmp_path / name)
        subprocess_cluster.add_worker()

    host("a")
    host("b")
    client = fd.connect(subprocess_cluster.address)
    client.wait_for_workers(2, timeout=60)
    prog = dspex.Predict(Classify)
    devset = make_examples(24)
    with dspex.context(lm=dspex.DummyLM(counted_needs_demos, cache=True)):
        evaluate = dspex.Evaluate(devset=devset, metric=metric, display_progress=False)
        first = evaluate(prog)
        assert lm_calls_on_workers(client) == len(devset)
        info = client.run_on_scheduler(_cache_info)
        assert info["entries"] == len(devset) and info["puts"] == len(devset)
        # both hosts die; two new ones with empty disk caches answer from the cluster's
        for name in list(subprocess_cluster.workers):
            subprocess_cluster.kill(name)
        host("c")
        host("d")
        client.wait_for_workers(2, timeout=60)
        again = evaluate(prog)
    assert lm_calls_on_workers(client) == 0  # the new workers made no call
    assert again.score == first.score
    info = client.run_on_scheduler(_cache_info)
    assert info["hits"] >= len(devset) and info["entries"] == len(devset)
    # configure(cache=False) still means no cache, the cluster's included
    with dspex.context(lm=dspex.DummyLM(counted_needs_demos, cache=True), cache=False):
        dspex.Evaluate(devset=devset[:4], metric=metric, display_progress=False)(prog)
    assert lm_calls_on_workers(client) == 4


@pytest.mark.timeout(60)
def test_the_cluster_cache_is_bounded_in_bytes(tmp_path):
    import dask.config

    from foundation_dask.dspex.lm import cache
    from tests.support import wait_for

    with dask.config.set({"foundation.dspex.cluster-cache-bytes": 1000,
                          "foundation.dspex.cache-dir": str(tmp_path)}):
        client = fd.connect(n_workers=1, processes=False)
        try:
            for i in range(10):
                cache.store(f"k{i}", {"outputs": ["x" * 250], "n": i})
            info = wait_for(lambda: (lambda d: d if d["puts"] == 10 else None)(
                client.run_on_scheduler(_cache_info)), timeout=30)
            assert info["bytes"] <= 1000 and info["entries"] == 3 and info["evicted"] == 7
            cache.get_cache().clear()  # this host forgets; the cluster keeps the newest
            assert cache.lookup("k9") == {"outputs": ["x" * 250], "n": 9}
            assert cache.lookup("k0") is None
        finally:
            fd.close()


@pytest.mark.timeout(60)
def test_clear_cache_empties_the_cluster_cache_too(tmp_path):
    import dask.config

    from foundation_dask.dspex.lm import cache, cluster_cache_info
    from tests.support import wait_for

    with dask.config.set({"foundation.dspex.cache-dir": str(tmp_path)}):
        fd.connect(n_workers=1, processes=False)
        try:
            cache.store("k", {"outputs": ["x"]})
            wait_for(lambda: cluster_cache_info()["entries"] == 1, timeout=30)
            assert cache.clear_cache() == 1
            assert cluster_cache_info()["entries"] == 0 and cache.lookup("k") is None
        finally:
            fd.close()
