"""Client: ``python -m foundation_dask``, the ``foundation-dask`` command line."""

from foundation_dask.cli import main

raise SystemExit(main())
