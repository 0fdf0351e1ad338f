"""A mount's life: build the layers, mount, tell the caller it is ready, serve, unmount;
and what it leaves behind (logs, counters)."""
