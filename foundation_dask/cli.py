"""Client: the ``foundation-dask`` command line (``demo``, ``health``)."""

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
    args = parser.parse_args(argv)
    if not args.verbose:
        for name in ("distributed", "foundation_dask"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
