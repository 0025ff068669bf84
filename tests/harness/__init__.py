"""Test harness for greenwatch: real Mosquitto and InfluxDB daemons started on
free loopback ports with throwaway data directories, plus a v2-write bridge so
influxdb-client can write into Debian's InfluxDB 1.6.  Nothing is stubbed.

Modules: ``ports`` (free ports), ``daemon`` (child-process lifecycle),
``mosquitto``, ``influx``, ``bridge``.  The pytest fixtures live in
``tests/conftest.py``.
"""

from .bridge import InfluxV2, V2WriteBridge, WriteRecord
from .daemon import HarnessError
from .influx import InfluxDB, InfluxQueryError
from .mosquitto import Mosquitto, mqtt_connect_ok
from .ports import free_port

__all__ = [
    "HarnessError",
    "InfluxDB",
    "InfluxQueryError",
    "InfluxV2",
    "Mosquitto",
    "V2WriteBridge",
    "WriteRecord",
    "free_port",
    "mqtt_connect_ok",
]
