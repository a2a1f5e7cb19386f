from foundation_dask.cli import main

raise SystemExit(main())
