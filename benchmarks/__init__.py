"""asv benchmarks of cryobench (see docs/benchmarks.md). ``micro/`` holds the pytest-benchmark
suite; it has no ``__init__.py`` on purpose, so asv's discovery does not import it."""
