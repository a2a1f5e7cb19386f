"""Client and scheduler and worker: the clusters ``dspex.tune`` measures on, and settings
put in effect for one measurement in every process of a cluster.

:class:`Clusters` (client) keeps one cluster per shape (the ``cluster.*`` settings of a
candidate): an embedded :class:`distributed.LocalCluster` made as
:func:`foundation_dask.connect` makes its own, with the Foundation plugins and
ElixirScope's scheduler meter (:mod:`foundation_dask.scope.profiling._scheduler_meter`);
or the given client's cluster for every shape. :func:`applied` sets the other settings
with ``dask.config.set`` in this process, on the scheduler and on the workers
(:func:`push_config` and :func:`pop_config` run there), and puts the old values back
afterwards.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask.config

from foundation_dask.scope.profiling._scheduler_meter import install_meter, read_meter

if TYPE_CHECKING:
    import distributed

__all__ = ["Clusters", "Shape", "applied", "connection_kept", "pop_config", "push_config"]

#: The ``cluster.*`` settings of a candidate, sorted: which cluster measures it.
Shape = tuple[tuple[str, Any], ...]

_SAVED: list[dict[str, Any]] = []


def push_config(settings: dict[str, Any]) -> None:
    """Set ``foundation.<key>`` values in this process, keeping the old ones (any process)."""
    _SAVED.append({k: dask.config.get(f"foundation.{k}", None) for k in settings})
    dask.config.set({f"foundation.{k}": v for k, v in settings.items()})


def pop_config() -> None:
    """Put back what the last :func:`push_config` replaced (any process)."""
    if _SAVED:
        dask.config.set({f"foundation.{k}": v for k, v in _SAVED.pop().items()})


@contextlib.contextmanager
def applied(client: distributed.Client, settings: dict[str, Any]) -> Iterator[None]:
    """``settings`` (keys under ``foundation.``) in effect here, on the scheduler and on
    the workers of ``client`` for the ``with`` block."""
    if not settings:
        yield
        return
    elsewhere = client.run_on_scheduler(os.getpid) != os.getpid()
    push_config(settings)
    try:
        if elsewhere:
            client.run_on_scheduler(push_config, settings)
        client.run(push_config, settings)
        yield
    finally:
        with contextlib.suppress(Exception):
            client.run(pop_config)
            if elsewhere:
                client.run_on_scheduler(pop_config)
        pop_config()


@contextlib.contextmanager
def connection_kept() -> Iterator[None]:
    """This process's note of its last client as it was before (the clusters ``tune``
    starts are closed: a facade called later must not take them for a lost connection)."""
    from foundation_dask.core import cluster as core_cluster

    last = core_cluster._last_address
    try:
        yield
    finally:
        core_cluster._last_address = last


@dataclass
class _Open:
    client: distributed.Client
    cluster: Any  # a LocalCluster; None for the given client's cluster


class Clusters:
    """The clusters of the candidates, by :data:`Shape`.

    Parameters
    ----------
    workload
        Run once, untimed, on each cluster when it opens (imports, loaded models).
    given
        Measure every shape on this client's cluster.
    log
        Where progress lines go.
    """

    def __init__(self, workload: Callable[[distributed.Client], float],
                 given: distributed.Client | None, log: Callable[[str], None]):
        self.workload = workload
        self.given = given
        self.log = log
        self.open: dict[Shape, _Open] = {}
        #: The scheduler meters' figures summed over the clusters closed so far: seconds
        #: metered (``window_s``), ``seconds`` and ``calls`` by subsystem.
        self.metered: dict[str, Any] = {"window_s": 0.0, "seconds": {}, "calls": {}}
        #: A shape kept open until :meth:`close` with ``keep=None`` (the defaults').
        self.keep_always: Shape | None = None

    def client(self, shape: Shape) -> distributed.Client:
        """The client of the cluster of ``shape``, started now if it is not open."""
        if shape not in self.open:
            self.open[shape] = self._start(shape)
        return self.open[shape].client

    def _start(self, shape: Shape) -> _Open:
        from distributed import Client, LocalCluster

        from foundation_dask.core.cluster import _embedded_cluster_kwargs, install_plugins

        if self.given is not None:
            self.given.run_on_scheduler(install_meter)
            self._warm_up(self.given)
            return _Open(self.given, None)
        with dask.config.set({f"foundation.{k}": v for k, v in shape}):
            kwargs = _embedded_cluster_kwargs({})
        self.log(f"tune: starting a cluster of {kwargs['n_workers']} workers x "
                 f"{kwargs['threads_per_worker']} threads")
        cluster = LocalCluster(**kwargs)
        client = Client(cluster, set_as_default=False)
        try:
            install_plugins(client)
            client.wait_for_workers(kwargs["n_workers"], timeout=120)
            client.run_on_scheduler(install_meter)
            self._warm_up(client)
        except BaseException:
            client.close()
            cluster.close()
            raise
        return _Open(client, cluster)

    def _warm_up(self, client: distributed.Client) -> None:
        t0 = time.perf_counter()
        with client.as_current():
            self.workload(client)
        self.log(f"tune: warm-up run, {time.perf_counter() - t0:.1f} s (not counted)")

    def close(self, keep: Sequence[Shape] | None = ()) -> None:
        """Close the clusters of the shapes not in ``keep`` nor :attr:`keep_always`
        (``keep=None``: all of them), adding their scheduler meter's figures to
        :attr:`metered` first."""
        if keep is None:
            self.keep_always = None
        kept = [*(keep or ()), self.keep_always]
        for shape in [s for s in self.open if s not in kept]:
            c = self.open.pop(shape)
            with contextlib.suppress(Exception):
                figures = c.client.run_on_scheduler(read_meter, uninstall=True)
                self.metered["window_s"] += figures["window_s"]
                for part in ("seconds", "calls"):
                    for name, value in figures[part].items():
                        self.metered[part][name] = self.metered[part].get(name, 0) + value
            if c.cluster is not None:
                with contextlib.suppress(Exception):
                    c.client.close()
                    c.cluster.close()
