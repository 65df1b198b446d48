"""t3track: a gated nightly version tracker for self-hosted T3 Code hosts."""

__version__ = "0.1.0"
