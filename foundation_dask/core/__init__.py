"""Foundation: supervised processes, registry and service mesh, channels, health,
the scheduler and worker plugins that host them, and ``connect()``."""
