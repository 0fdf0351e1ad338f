"""The commands a user runs: ``cupixfs`` (mount, demo, cache, prefetch, status, login,
unmount) and ``mount.cupixfs`` (mount(8)'s helper). They parse, route, and print one-line
errors; the work of a mount lives in `cupixfs.mount`."""
