"""The intensity provider of a site, built from its configuration."""

from __future__ import annotations

from .intensity import AnnualIntensity, IntensityProvider, SeriesIntensity
from .live import CachedLiveIntensity, default_cache_dir

__all__ = ["load_provider"]


def load_provider(
    zone: str,
    series_csv: str | None = None,
    live_url: str | None = None,
    cache_dir: str | None = None,
    *,
    live_headers: dict[str, str] | None = None,
    background: bool = False,
) -> IntensityProvider:
    """Build the intensity provider for a site from its configuration.

    The chain is: operator series (if ``series_csv``) -> live API with cache (if ``live_url``;
    cache in ``cache_dir`` or :func:`default_cache_dir`) -> shipped annual figure for ``zone``.
    Each link answers the times it covers and hands the rest to the next. An unknown ``zone``
    raises ValueError even when a series is given, because the fallback must exist.
    ``background``: the live link fetches on its own thread and lookups never wait for the
    network (see :class:`CachedLiveIntensity`); for services that look up on an event loop.
    """
    provider: IntensityProvider = AnnualIntensity(zone)
    if live_url:
        provider = CachedLiveIntensity(
            provider.zone, live_url, cache_dir or default_cache_dir(), fallback=provider, headers=live_headers,
            background=background,
        )
    if series_csv:
        provider = SeriesIntensity(series_csv, fallback=provider, zone=provider.zone)
    return provider
