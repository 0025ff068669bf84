"""greenwatch: per-job energy and carbon accounting for GPU datacentres."""

__version__ = "0.1.0"
