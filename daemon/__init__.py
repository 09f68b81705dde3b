"""vidring.daemon: the process that fills the ring."""
