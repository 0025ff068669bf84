"""Transport: the versioned wire format and the MQTT topics and clients that carry it.

``VERSION``, ``WireError``, ``decode`` and ``encode`` come from :mod:`greenwatch.transport.wire`.
They are loaded on first use (PEP 562): the wire format needs numpy, and the Slurm prolog
and epilog, which import :mod:`greenwatch.transport.events` and
:mod:`greenwatch.transport.mqtt` only, must start in a fraction of a second.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VERSION", "WireError", "decode", "encode"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from greenwatch.transport import wire

        return getattr(wire, name)
    raise AttributeError(f"module 'greenwatch.transport' has no attribute {name!r}")
