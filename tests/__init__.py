"""d2bench's tests. A package, so that child processes spawned by runner.run.workers can import the
functions they run (tests.isolation_helpers)."""
