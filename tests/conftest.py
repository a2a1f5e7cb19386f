"""Shared fixtures: real Dask clusters.

In-process work uses ``distributed.utils_test`` (``gen_cluster``, ``client``);
``cluster_client`` is an embedded cluster of worker processes shared by a module;
whatever must survive a real failure runs on :class:`~tests.support.SubprocessCluster`,
a ``dask scheduler`` and ``dask worker`` processes killed with SIGKILL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dask.config
import distributed
import pytest
from distributed import utils_test
from distributed.utils_test import (  # noqa: F401  (pytest fixtures)
    cleanup,
    client,
    cluster_fixture,
    loop,
    loop_in_thread,
)

import foundation_dask as fd
from foundation_dask import config as fd_config
from tests.support import SubprocessCluster

# distributed.utils_test restores the dask config it saw at its import after each
# gen_cluster test; make that snapshot include the foundation defaults.
dask.config.update(utils_test.original_config, fd_config.defaults, priority="old")


@pytest.fixture(scope="module")
def cluster_client(request: pytest.FixtureRequest) -> Iterator[distributed.Client]:
    """A client of an embedded cluster of two worker processes (``fd.connect``), shared by
    the tests of one module; ``threads_per_worker`` is the module's ``CLUSTER_THREADS``
    (default 1)."""
    c = fd.connect(n_workers=2, threads_per_worker=getattr(request.module, "CLUSTER_THREADS", 1))
    c.wait_for_workers(2, timeout=60)
    try:
        yield c
    finally:
        fd.close()


@pytest.fixture
def subprocess_cluster(tmp_path: Path) -> Iterator[SubprocessCluster]:
    """Factory-style fixture: ``subprocess_cluster.start(n_workers)`` then connect to it."""
    cluster = SubprocessCluster(tmp_path)
    try:
        yield cluster
    finally:
        fd.close()
        cluster.close()


@pytest.fixture
def fd_client(subprocess_cluster: SubprocessCluster):
    """A client from ``fd.connect(address)`` on a 2-worker subprocess cluster."""
    subprocess_cluster.start(2)
    c = fd.connect(subprocess_cluster.address)
    c.wait_for_workers(2, timeout=60)
    yield c
