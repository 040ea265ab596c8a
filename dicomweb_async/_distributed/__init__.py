"""Sharding bulk transfers over many processes or machines (engine-neutral core)."""
