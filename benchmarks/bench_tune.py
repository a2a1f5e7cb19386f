"""``dspex.tune`` on the Evaluate workload of ``bench_dspex_throughput.py``: examples/s
of the tuned settings against the defaults, measured in the same run.

Run: ``python benchmarks/bench_tune.py [--examples 200] [--ms 20] [--latency-ms 0]
[--budget 300] [--rounds 3]``

First ``dspex.tune`` searches the default space (workers, threads per worker, Evaluate's
chunk size) and writes ``foundation-tuned.yaml`` in a temporary folder. Then two
embedded clusters are started, one under the defaults and one under the tuned
settings (the YAML file read back with ``dask.config.collect``), and the workload is
measured on each alternately, ``--rounds`` times (the first of each pair alternates),
outside ``tune``'s own measurements. Printed: examples/s of each (mean of the rounds),
their ratio, ``tune``'s own gain, and Foundation's share of the scheduler's event loop
during the tuning.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import dask.config
from distributed import Client, LocalCluster

from foundation_dask.core.cluster import _embedded_cluster_kwargs, install_plugins
from foundation_dask.dspex.tuning import evaluate_workload, tune


def start(conf: dict[str, Any]) -> tuple[LocalCluster, Client]:
    """An embedded cluster made under ``conf`` (its workers start with that config)."""
    with dask.config.set(conf):
        kwargs = _embedded_cluster_kwargs({})
        cluster = LocalCluster(**kwargs)
    client = Client(cluster, set_as_default=False)
    install_plugins(client)
    client.wait_for_workers(kwargs["n_workers"], timeout=120)
    return cluster, client


def flat(conf: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in conf.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--ms", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--budget", type=float, default=300.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workload = evaluate_workload(args.examples, args.ms, args.latency_ms)

    folder = Path(tempfile.mkdtemp(prefix="foundation-tune-"))
    t0 = time.perf_counter()
    result = tune(workload, budget_s=args.budget, write=folder / "foundation-tuned.yaml")
    took = time.perf_counter() - t0
    print(result.frame.to_string(index=False))
    # the file read back as Dask reads ~/.config/dask, as dotted keys for dask.config.set
    # (a nested {"foundation": {...}} would replace the whole section)
    tuned = flat(dask.config.collect(paths=[str(folder)], env={}))
    defaults: dict[str, Any] = {}

    with contextlib.ExitStack() as stack:
        runs = {}
        for name, conf in (("defaults", defaults), ("tuned", tuned)):
            cluster, client = start(conf)
            stack.callback(cluster.close)
            stack.callback(client.close)
            with dask.config.set(conf), client.as_current():
                workload(client)  # warm up, as tune does
            runs[name] = (client, conf, [])
        order = ["defaults", "tuned"]
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                client, conf, rates = runs[name]
                with dask.config.set(conf), client.as_current():
                    t = time.perf_counter()
                    units = workload(client)
                    rates.append(units / (time.perf_counter() - t))
    mean = {name: sum(rates) / len(rates) for name, (_, _, rates) in runs.items()}
    print(f"\n{args.examples} examples of {args.ms:g} ms CPU-bound Python "
          f"(+{args.latency_ms:g} ms wait) each; tune took {took:.0f} s")
    print(f"  tuned settings: {result.best}")
    print(f"  defaults        {mean['defaults']:7.1f} examples/s  "
          f"({', '.join(f'{x:.1f}' for x in runs['defaults'][2])})")
    print(f"  tuned           {mean['tuned']:7.1f} examples/s  "
          f"({', '.join(f'{x:.1f}' for x in runs['tuned'][2])})")
    print(f"  ratio tuned / defaults: {mean['tuned'] / mean['defaults']:.2f}x "
          f"(tune's own final rounds: {result.gain:.2f}x)")
    shares = result.overhead.set_index("subsystem")["share"]
    print("  Foundation's share of the scheduler's event loop while tuning: "
          + ", ".join(f"{k} {100 * v:.2f}%" for k, v in shares.items()))


if __name__ == "__main__":
    main()
