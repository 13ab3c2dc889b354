"""Benchmarks: figures printed side by side, never assertions.

Each module ``ringkit.bench.<name>`` that exposes a click command named ``command`` becomes
``ringkit bench <name>`` (see `ringkit.cli.bench`).  Measured figures are recorded in
docs/benchmarks.md.
"""

__all__ = ()
