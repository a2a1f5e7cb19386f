"""Client: the ``foundation-dask`` command line (``demo``, ``health``, ``tune``)."""

from __future__ import annotations

import argparse
import logging
import sys


def _demo(args: argparse.Namespace) -> int:
    from foundation_dask.demo import run_demo

    summary = run_demo(n_workers=args.workers, quick=args.quick, llm=not args.no_llm,
                       out_dir=args.out)
    return 0 if summary.get("state_kept", True) else 1


def _health(args: argparse.Namespace) -> int:
    from foundation_dask.core.cluster import close, connect
    from foundation_dask.core.health import HealthMonitor

    connect(args.address)
    try:
        print(HealthMonitor.get_cluster_health())
    finally:
        close()
    return 0


def _tune(args: argparse.Namespace) -> int:
    import json

    from foundation_dask.dspex.tuning import evaluate_workload, tune
    from foundation_dask.errors import TuneError

    try:
        space = json.loads(args.space) if args.space else None
    except json.JSONDecodeError as exc:
        print(f"foundation-dask tune: --space is not JSON ({exc}); write it as "
              '\'{"cluster.threads-per-worker": [1, 2, 4]}\'', file=sys.stderr)
        return 2
    try:
        result = tune(evaluate_workload(args.examples, args.ms, args.latency_ms),
                      space=space, budget_s=args.budget, repeats=args.repeats,
                      write=args.out, display_progress=not args.quiet)
    except TuneError as exc:
        print(f"foundation-dask {exc}", file=sys.stderr)
        return 2
    print(result.frame.to_string(index=False))
    print()
    print(result.overhead.to_string(index=False))
    print()
    print(result)
    print(f"gain: {result.gain:.2f}x ({result.best_rate:.1f} vs {result.baseline:.1f} "
          f"{result.unit}/s with the defaults)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``foundation-dask``."""
    parser = argparse.ArgumentParser(
        prog="foundation-dask",
        description="Supervised processes, channels, tracing and LM-program optimization on Dask.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Dask's logs")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the guided tour on an embedded cluster")
    demo.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    demo.add_argument("--quick", action="store_true", help="fewer examples (a short run)")
    demo.add_argument("--no-llm", action="store_true",
                      help="skip the DSPEx part with the local language model")
    demo.add_argument("--out", default="foundation-report",
                      help="folder of the HTML report and trace files")
    demo.set_defaults(func=_demo)
    health = sub.add_parser("health", help="print the health of a running cluster")
    health.add_argument("address", help="scheduler address, e.g. tcp://127.0.0.1:8786")
    health.set_defaults(func=_health)
    tune = sub.add_parser("tune", help="tune Foundation's settings on the Evaluate workload "
                          "and write them as a dask-config YAML file")
    tune.add_argument("--out", default="foundation-tuned.yaml",
                      help="the YAML file written (default foundation-tuned.yaml)")
    tune.add_argument("--budget", type=float, default=300.0,
                      help="seconds after which no new round starts (default 300)")
    tune.add_argument("--repeats", type=int, default=3, help="rounds of each race (default 3)")
    tune.add_argument("--space", default=None,
                      help='settings and their values as JSON, e.g. '
                           '\'{"cluster.threads-per-worker": [1, 2, 4]}\' (default: workers, '
                           'threads per worker and Evaluate\'s chunk size)')
    tune.add_argument("--examples", type=int, default=200,
                      help="examples of the Evaluate workload (default 200)")
    tune.add_argument("--ms", type=float, default=20.0,
                      help="CPU milliseconds per example (default 20)")
    tune.add_argument("--latency-ms", type=float, default=0.0,
                      help="then a wait per example, as for an LM server (default 0)")
    tune.add_argument("--quiet", action="store_true", help="no line per measurement")
    tune.set_defaults(func=_tune)
    args = parser.parse_args(argv)
    if not args.verbose:
        for name in ("distributed", "foundation_dask"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
