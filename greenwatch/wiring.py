"""Builds the runtime objects every service needs from a validated :class:`Config`.

Kept apart from the packages themselves so that attribution, carbon and storage
stay free of configuration concerns.  Errors name the config key and become
exit status 2 in the CLI.
"""

from __future__ import annotations

from greenwatch.attribution import AttributionSettings, CarbonContext
from greenwatch.carbon import load_provider, load_pue
from greenwatch.config import Config, ConfigError

__all__ = ["attribution_settings", "carbon_context", "influx_store"]


def attribution_settings(cfg: Config) -> AttributionSettings:
    """The ``[attribution]`` section as settings."""
    return AttributionSettings(cfg.attribution.idle_policy, cfg.attribution.idle_power_w)


def carbon_context(cfg: Config, *, background_fetch: bool = False) -> CarbonContext:
    """Grid intensity, PUE and market factor from the ``[carbon]`` section.

    ``background_fetch``: a live intensity API is fetched on a thread of its own, never by a
    lookup (a service whose lookups run on its event loop needs this).
    """
    c = cfg.carbon
    try:
        intensity = load_provider(c.zone, c.intensity_csv or None, c.live_url or None, c.cache_dir or None,
                                  background=background_fetch)
    except (ValueError, OSError) as exc:
        key = "carbon.intensity_csv" if c.intensity_csv and "zone" not in str(exc).lower() else "carbon.zone"
        raise ConfigError(key, str(exc)) from None
    try:
        pue = load_pue(c.pue, c.facility_csv or None)
    except (ValueError, OSError) as exc:
        raise ConfigError("carbon.facility_csv" if c.facility_csv else "carbon.pue", str(exc)) from None
    market = c.market_factor_g_per_kwh if c.market_factor_g_per_kwh >= 0 else None
    return CarbonContext(intensity, pue, market)


def influx_store(cfg: Config):  # -> InfluxStore
    """An InfluxDB store from the ``[influxdb]`` section (token read from its file)."""
    from greenwatch.credentials import influx_token
    from greenwatch.storage.influx import InfluxStore

    token = influx_token(cfg)
    return InfluxStore(cfg.influxdb.url, token, cfg.influxdb.org, cfg.influxdb.bucket, cfg.influxdb.timeout_s,
                       gzip_level=cfg.influxdb.gzip_level, write_api=cfg.influxdb.write_api)
