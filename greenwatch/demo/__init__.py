"""Demo: a simulated cluster run through the real agent, wire format, collector and store."""

from greenwatch.demo.run import DemoOptions, format_table, run_demo

__all__ = ["DemoOptions", "format_table", "run_demo"]
