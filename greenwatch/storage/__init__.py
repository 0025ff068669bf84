"""Storage: the data model as records, written to InfluxDB or to the embedded store."""

from greenwatch.storage.records import Record, ledger_records, line_protocol

__all__ = ["Record", "ledger_records", "line_protocol"]
