"""The health poller's pass: read AWS (the only concurrency), decide (``core.decide``), act (the only writes)."""
