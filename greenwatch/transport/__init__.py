"""Transport: the versioned wire format and the MQTT topics and clients that carry it."""

from greenwatch.transport.wire import VERSION, WireError, decode, encode

__all__ = ["VERSION", "WireError", "decode", "encode"]
