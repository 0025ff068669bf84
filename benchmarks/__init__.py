"""greenwatch benchmarks (run with ``python benchmarks/run.py``)."""
