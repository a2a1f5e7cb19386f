"""Scheduler: the Foundation pages of the Dask dashboard, one module each.

====================================  ==================================================
``/individual-foundation-overview``   cluster health, traces and DSPEx optimizations
                                      side by side (:mod:`.overview`)
``/individual-foundation-health``     nodes (status, CPU, memory, load, processes,
                                      tasks) and CPU/memory/load over time (:mod:`.health`)
``/individual-foundation-processes``  supervised processes (:mod:`.processes`)
``/individual-foundation-traces``     traces, and the timeline of the selected one
                                      (:mod:`.traces`)
``/individual-foundation-hotspots``   top functions and flame graph of the workers'
                                      profile over the last minute (:mod:`.hotspots`)
====================================  ==================================================

Each module registers its page with :func:`foundation_dask._pages.register_page` when
it is imported; :mod:`foundation_dask.dashboard` imports them and serves the pages.
The pages run inside the scheduler process, on its event loop, and read the scheduler
extensions directly (no client, no RPC to the scheduler).
"""
