"""The credentials and TLS material the config names, checked once when a service starts.

Kept apart from :mod:`greenwatch.wiring` (which pulls in attribution and numba) so that the
agent starts fast.  Every problem becomes a :class:`~greenwatch.config.ConfigError` naming
the key, i.e. one clear line and exit status 2, instead of a failure on every reconnect.
"""

from __future__ import annotations

import ssl

from greenwatch.config import Config, ConfigError
from greenwatch.secretfiles import SecretFileError, check_owner_only, read_secret

__all__ = ["mqtt_password", "check_mqtt_tls", "influx_token"]


def mqtt_password(cfg: Config) -> str | None:
    """The MQTT password from ``mqtt.password_file`` (None without one); an unsafe file is a config error."""
    if not cfg.mqtt.password_file:
        return None
    try:
        return read_secret(cfg.mqtt.password_file)
    except SecretFileError as exc:
        raise ConfigError("mqtt.password_file", str(exc)) from None


def influx_token(cfg: Config) -> str:
    """The InfluxDB token from ``influxdb.token_file`` ("" without one); an unsafe file is a config error."""
    if not cfg.influxdb.token_file:
        return ""
    try:
        return read_secret(cfg.influxdb.token_file)
    except SecretFileError as exc:
        raise ConfigError("influxdb.token_file", str(exc)) from None


def check_mqtt_tls(cfg: Config) -> None:
    """Build the TLS context once, so a missing CA, certificate or key, or a key others may read, is a config error."""
    m = cfg.mqtt
    if not m.tls:
        return
    if m.key_file:
        try:
            check_owner_only(m.key_file)
        except SecretFileError as exc:
            raise ConfigError("mqtt.key_file", str(exc)) from None
    try:
        context = ssl.create_default_context(cafile=m.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("mqtt.ca_file", f"cannot load it: {exc}") from None
    if m.cert_file:
        try:
            context.load_cert_chain(m.cert_file, m.key_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("mqtt.cert_file", f"cannot load it (or mqtt.key_file): {exc}") from None
