"""Foundation primitives: processes, registry and service mesh, channels, health."""
