"""Storage: the data model as records, written to InfluxDB or to the embedded store."""

from greenwatch.storage.records import BlockSource, Record, line_protocol, table_lines, table_records

__all__ = ["BlockSource", "Record", "line_protocol", "table_lines", "table_records"]
