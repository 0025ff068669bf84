"""Standalone metering for a researcher's workstation: ``greenwatch run -- CMD`` and ``greenwatch.track``.

No broker and no database: the real agent sampler, wire format, collector and an embedded
store run in one process, and the run ends with its report in all four formats.
"""
