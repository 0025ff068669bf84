"""Tests for greenwatch.carbon (no network: the live provider talks to a local http.server)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenwatch.carbon import (
    DEFAULT_PUE,
    J_PER_KWH,
    SECONDS_PER_YEAR,
    AnnualIntensity,
    CachedLiveIntensity,
    ConstantPue,
    EmbodiedModel,
    SeriesIntensity,
    SeriesPue,
    coverage_of,
    embodied_g,
    emissions_g,
    equivalences,
    known_zones,
    kwh,
    load_embodied,
    load_provider,
    load_pue,
    lowest_intensity_window,
    market_basis_note,
    market_intensity,
    mean_intensity,
    parse_timestamp,
    sci_g,
)
from greenwatch.carbon.intensity import annual_table

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z
H = 3600.0


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- annual table


def test_annual_known_values() -> None:
    de = AnnualIntensity("DE")
    assert de.g_per_kwh == 342.1 and de.year == 2024 and de.resolution == "annual"
    assert "Ember" in de.source and "CC BY 4.0" in de.source
    out = de.intensity_at(np.array([0.0, T0, 4e9]))
    assert out.dtype == np.float64 and np.all(out == 342.1)
    assert AnnualIntensity("fr").g_per_kwh == 44.2
    assert AnnualIntensity("world").zone == "World"
    assert AnnualIntensity("World").g_per_kwh == 472.9
    assert AnnualIntensity("EU").g_per_kwh == 213.0
    assert AnnualIntensity("DE-UBA").g_per_kwh == 363.0
    assert AnnualIntensity("DE-UBA", year=2023).g_per_kwh == 386.0
    assert AnnualIntensity("DE-MARGINAL").g_per_kwh == 650.0
    assert coverage_of(de, T0, T0 + H) == 1.0


def test_annual_table_rows_carry_source_and_licence() -> None:
    rows = annual_table()
    assert len(rows) >= 41
    for r in rows:
        assert r.source and r.licence and r.basis and r.g_per_kwh > 0
    ember = [r for r in rows if r.source.startswith("Ember")]
    assert len(ember) == 41 and all(r.year == 2024 and r.licence == "CC BY 4.0" for r in ember)


def test_unknown_zone_error_names_zone_and_lists_known() -> None:
    with pytest.raises(ValueError) as exc:
        AnnualIntensity("XX")
    msg = str(exc.value)
    assert "'XX'" in msg and "DE" in msg and "FR" in msg and "World" in msg
    assert "DE" in known_zones()
    with pytest.raises(ValueError, match="available years: 2024"):
        AnnualIntensity("DE", year=1999)


# ---------------------------------------------------------------- operator series


def test_parse_timestamp_forms() -> None:
    assert parse_timestamp("1714564800") == T0
    assert parse_timestamp("1714564800.5") == T0 + 0.5
    assert parse_timestamp("2024-05-01T12:00:00Z") == T0
    assert parse_timestamp("2024-05-01T14:00:00+02:00") == T0
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_timestamp("2024-05-01T12:00:00")
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


def test_series_step_semantics_and_boundaries(tmp_path: Path) -> None:
    f = write(
        tmp_path / "ci.csv",
        "timestamp,g_per_kwh\n"
        "2024-05-01T12:00:00Z,100\n"
        "2024-05-01T15:00:00+02:00,200\n"  # = 13:00Z
        f"{int(T0 + 2 * H)},300\n",
    )
    s = SeriesIntensity(f, fallback=AnnualIntensity("DE"))
    assert s.resolution == "hourly" and s.zone == "DE"
    t = np.array([T0, T0 + H - 0.1, T0 + H, T0 + 2 * H, T0 + 3 * H - 0.1, T0 + 3 * H, T0 - 0.1])
    assert s.intensity_at(t).tolist() == [100, 100, 200, 300, 300, 342.1, 342.1]
    # shape is preserved, scalars work
    assert s.intensity_at(np.full((2, 3), T0 + 10)).shape == (2, 3)
    assert float(s.intensity_at(T0 + H)) == 200.0
    assert "ci.csv" in s.source and "Ember" in s.source


def test_series_unsorted_and_duplicates(tmp_path: Path) -> None:
    f = write(
        tmp_path / "ci.csv",
        "Timestamp , G_per_kWh\n"
        f"{T0 + 2 * H},30\n"
        f"{T0},10\n"
        "\n"
        "# a comment line\n"
        f"{T0 + H},20\n"
        f"{T0},11\n",  # duplicate: the later row wins
    )
    s = SeriesIntensity(f, fallback=AnnualIntensity("FR"))
    assert s.steps.starts.tolist() == [T0, T0 + H, T0 + 2 * H]
    assert s.intensity_at(np.array([T0, T0 + H, T0 + 2 * H])).tolist() == [11, 20, 30]


@pytest.mark.parametrize(
    "body,line,match",
    [
        (f"timestamp,g_per_kwh\n{T0},1\n{T0 + H},2\nabc,3\n", 4, "neither unix seconds"),
        (f"timestamp,g_per_kwh\n{T0},1\n{T0 + H},x\n", 3, "not a number"),
        (f"timestamp,g_per_kwh\n{T0},1\n{T0 + H},-5\n", 3, "negative"),
        (f"timestamp,g_per_kwh\n{T0},1,2\n", 2, "expected 2 columns"),
        ("timestamp,g_per_kwh\n2024-05-01T12:00:00,1\n", 2, "no UTC offset"),
        (f"time,value\n{T0},1\n", 1, "expected timestamp,g_per_kwh"),
        (f"timestamp,g_per_kwh\n{T0},nan\n", 2, "not finite"),
    ],
)
def test_series_bad_rows_name_file_and_line(tmp_path: Path, body: str, line: int, match: str) -> None:
    f = write(tmp_path / "bad.csv", body)
    with pytest.raises(ValueError, match=match) as exc:
        SeriesIntensity(f, fallback=AnnualIntensity("DE"))
    assert f"bad.csv:{line}:" in str(exc.value)


def test_series_empty_and_single_row(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no data rows"):
        SeriesIntensity(write(tmp_path / "e.csv", "timestamp,g_per_kwh\n"), AnnualIntensity("DE"))
    one = write(tmp_path / "one.csv", f"timestamp,g_per_kwh\n{T0},50\n")
    with pytest.raises(ValueError, match="last_step_s"):
        SeriesIntensity(one, AnnualIntensity("DE"))
    s = SeriesIntensity(one, AnnualIntensity("DE"), last_step_s=900)
    assert s.intensity_at(np.array([T0 + 899, T0 + 900])).tolist() == [50, 342.1]
    with pytest.raises(ValueError, match="cannot open"):
        SeriesIntensity(tmp_path / "missing.csv", AnnualIntensity("DE"))


def test_series_coverage_and_fallback(tmp_path: Path) -> None:
    rows = "".join(f"{T0 + i * 900},{100 + i}\n" for i in range(8))  # 2 h of 15-min data
    s = SeriesIntensity(write(tmp_path / "q.csv", "timestamp,g_per_kwh\n" + rows), AnnualIntensity("PL"))
    assert s.resolution == "15min"
    assert s.coverage(T0, T0 + 2 * H) == 1.0
    assert s.coverage(T0 - 2 * H, T0 + 2 * H) == pytest.approx(0.5)
    assert s.coverage(T0 + H, T0 + 5 * H) == pytest.approx(0.25)
    assert s.coverage(T0 + 3 * H, T0 + 4 * H) == 0.0
    assert s.coverage(T0 + 10, T0 + 10) == 1.0
    assert coverage_of(s, T0 - 2 * H, T0) == 0.0
    out = s.intensity_at(np.array([T0 - 1, T0 + 2 * H + 1]))
    assert out.tolist() == [615.0, 615.0]


# ---------------------------------------------------------------- live provider


class _Api(BaseHTTPRequestHandler):
    mode = "ok"
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).requests.append(self.path)
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if type(self).mode == "garbage":
            body = b"<html>not json</html>"
        else:
            when = q.get("datetime", ["2024-05-01T12:00:00Z"])[0]
            hour = datetime.fromisoformat(when).astimezone(timezone.utc).hour
            doc = {"zone": q.get("zone", ["?"])[0], "carbonIntensity": 100 + hour,
                   "datetime": when.replace("Z", ".000Z")}
            body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api():
    _Api.mode = "ok"
    _Api.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state = {"server": server, "port": server.server_address[1]}

    def stop() -> None:
        if state["server"] is not None:
            state["server"].shutdown()
            state["server"].server_close()
            state["server"] = None

    state["stop"] = stop
    yield state
    stop()


def test_live_provider_fetches_caches_and_serves_offline(tmp_path: Path, api: dict) -> None:
    url = f"http://127.0.0.1:{api['port']}/v3/carbon-intensity/past?zone={{zone}}&datetime={{datetime}}"
    live = CachedLiveIntensity("DE", url, tmp_path, timeout_s=2)
    t = np.array([T0 + 60, T0 + 1800, T0 + H + 5, T0 + H + 10])  # hours 12 and 13
    assert live.intensity_at(t).tolist() == [112, 112, 113, 113]
    assert len(_Api.requests) == 2 and "zone=DE" in _Api.requests[0]
    assert live.coverage(T0, T0 + 2 * H) == 1.0
    assert live.intensity_at(t).tolist() == [112, 112, 113, 113]  # served from cache
    assert len(_Api.requests) == 2
    cache = tmp_path / "live_intensity_DE.csv"
    lines = cache.read_text().splitlines()
    assert lines[0] == "timestamp,g_per_kwh" and len(lines) == 3
    assert "127.0.0.1" in live.source and "Ember" in live.source

    api["stop"]()  # offline from here on
    offline = CachedLiveIntensity("DE", url, tmp_path, timeout_s=1, retry_after_s=3600)
    out = offline.intensity_at(np.append(t, T0 + 5 * H))  # hour 17 was never cached
    assert out.tolist() == [112, 112, 113, 113, 342.1]
    assert offline.failures == 1
    out2 = offline.intensity_at(np.array([T0 + 6 * H]))  # backing off: no new request
    assert out2.tolist() == [342.1] and offline.fetches == 1
    assert offline.coverage(T0, T0 + 4 * H) == pytest.approx(0.5)
    # the cache file doubles as an operator series
    s = SeriesIntensity(cache, AnnualIntensity("DE"))
    assert s.intensity_at(np.array([T0 + 1])).tolist() == [112]


def test_live_latest_endpoint_and_garbage_answer(tmp_path: Path, api: dict) -> None:
    now = [T0 + 600.0]
    url = f"http://127.0.0.1:{api['port']}/latest?zone={{zone}}"
    live = CachedLiveIntensity("FR", url, tmp_path, clock=lambda: now[0], timeout_s=2)
    # long-past times: a "latest" endpoint cannot help, no request, annual fallback
    assert live.intensity_at(np.array([T0 - 30 * 86400])).tolist() == [44.2]
    assert live.fetches == 0
    assert live.intensity_at(np.array([T0 + 600])).tolist() == [112]
    assert live.fetches == 1

    _Api.mode = "garbage"
    bad = CachedLiveIntensity("NO", url, tmp_path, clock=lambda: now[0], timeout_s=2)
    assert bad.intensity_at(np.array([T0 + 600])).tolist() == [30.8]
    assert bad.failures == 1
    with pytest.raises(ValueError, match="placeholder"):
        CachedLiveIntensity("DE", "http://x/{token}", tmp_path)


def test_live_background_lookups_never_wait_for_the_network(tmp_path: Path) -> None:
    release, asked = threading.Event(), threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            asked.set()
            release.wait(30)  # stalls far beyond the client's timeout until released
            body = json.dumps({"carbonIntensity": 99, "datetime": "2024-05-01T12:00:00Z"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/past?zone={{zone}}&datetime={{datetime}}"
    live = CachedLiveIntensity("DE", url, tmp_path, timeout_s=20, background=True)
    try:
        t = np.array([T0 + 60])
        began = time.monotonic()
        assert live.intensity_at(t).tolist() == [342.1]   # the annual figure while the step is fetched
        assert asked.wait(10)
        assert live.intensity_at(t).tolist() == [342.1]   # the API still stalls: no lookup waits for it
        assert time.monotonic() - began < 2.0
        release.set()
        deadline = time.monotonic() + 10
        while live.intensity_at(t).tolist() != [99.0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.intensity_at(t).tolist() == [99.0] and live.fetches == 1
        assert "99" in (tmp_path / "live_intensity_DE.csv").read_text()
    finally:
        release.set()
        live.close()
        server.shutdown()
        server.server_close()


def test_live_tolerates_truncated_cache(tmp_path: Path) -> None:
    cache = write(tmp_path / "live_intensity_DE.csv", f"timestamp,g_per_kwh\n{T0},250\n{T0 + H},2\n17145")
    live = CachedLiveIntensity("DE", "http://127.0.0.1:9/?z={zone}&t={unix}", tmp_path,
                               timeout_s=0.5, retry_after_s=3600)
    assert live.intensity_at(np.array([T0 + 1, T0 + H + 1])).tolist() == [250, 2]
    live._store([(T0 + 2 * H, 7.0)])  # appending after a half-written row starts a new line
    again = CachedLiveIntensity("DE", "http://127.0.0.1:9/?z={zone}&t={unix}", tmp_path)
    assert again.intensity_at(np.array([T0 + 2 * H])).tolist() == [7.0]
    assert cache.read_text().splitlines()[3] == "17145"


def test_load_provider_chain(tmp_path: Path) -> None:
    assert isinstance(load_provider("DE", None, None, None), AnnualIntensity)
    f = write(tmp_path / "s.csv", f"timestamp,g_per_kwh\n{T0},10\n{T0 + H},20\n")
    p = load_provider("de", str(f), None, None)
    assert isinstance(p, SeriesIntensity) and p.zone == "DE"
    assert p.intensity_at(np.array([T0, T0 - 1])).tolist() == [10, 342.1]
    p2 = load_provider("DE", str(f), "http://127.0.0.1:9/?d={datetime}", str(tmp_path / "cache"))
    assert isinstance(p2, SeriesIntensity) and isinstance(p2.fallback, CachedLiveIntensity)
    with pytest.raises(ValueError, match="'Atlantis'"):
        load_provider("Atlantis", str(f), None, None)


# ---------------------------------------------------------------- carbon-aware window


def test_lowest_window_finds_trough(tmp_path: Path) -> None:
    day = 1_714_521_600.0  # 2024-05-01T00:00Z
    values = [400.0] * 48
    values[13:16] = [100.0, 90.0, 110.0]  # trough at 13:00-16:00
    rows = "".join(f"{day + i * H},{v}\n" for i, v in enumerate(values))
    s = SeriesIntensity(write(tmp_path / "d.csv", "timestamp,g_per_kwh\n" + rows), AnnualIntensity("DE"))
    t_start = day + 20 * H
    best, mean = lowest_intensity_window(s, t_start, duration_s=3 * H, window_s=12 * H)
    assert best == day + 13 * H and mean == pytest.approx(100.0)
    best1, mean1 = lowest_intensity_window(s, t_start, duration_s=H, window_s=12 * H)
    assert best1 == day + 14 * H and mean1 == pytest.approx(90.0)
    # flat: no better time than now
    flat = AnnualIntensity("DE")
    assert lowest_intensity_window(flat, T0 + 123, 7200, 86400) == (T0 + 123, pytest.approx(342.1))
    # horizon clipping
    best2, _ = lowest_intensity_window(s, t_start, 3 * H, 12 * H, not_before=day + 15 * H)
    assert best2 >= day + 15 * H
    assert mean_intensity(s, day + 13 * H, day + 16 * H) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        lowest_intensity_window(s, t_start, 0, H)


# ---------------------------------------------------------------- PUE


def test_pue_constant_and_series(tmp_path: Path) -> None:
    assert DEFAULT_PUE == 1.56
    c = ConstantPue()
    assert c.pue == 1.56 and c.pue_at(np.zeros(3)).tolist() == [1.56] * 3
    with pytest.raises(ValueError, match=">= 1.0"):
        ConstantPue(0.95)
    f = write(tmp_path / "p.csv", f"timestamp,facility_w,it_w\n{T0},1300,1000\n{T0 + 900},1200,1000\n")
    p = load_pue(1.4, str(f))
    assert isinstance(p, SeriesPue) and p.resolution == "15min"
    out = p.pue_at(np.array([T0, T0 + 899, T0 + 900, T0 + 1799, T0 + 1800, T0 - 1]))
    assert out == pytest.approx([1.3, 1.3, 1.2, 1.2, 1.4, 1.4])
    assert p.coverage(T0, T0 + 3600) == pytest.approx(0.5)
    g = write(tmp_path / "g.csv", f"timestamp,pue\n{T0},1.1\n{T0 + H},1.25\n")
    assert load_pue(series_csv=str(g)).pue_at(np.array([T0 + H])).tolist() == [1.25]
    assert isinstance(load_pue(1.2), ConstantPue)


@pytest.mark.parametrize(
    "body,line,match",
    [
        (f"timestamp,facility_w,it_w\n{T0},1300,1000\n{T0 + 900},900,1000\n", 3, r"PUE 0\.900 < 1\.0"),
        (f"timestamp,facility_w,it_w\n{T0},1300,0\n", 2, "it_w 0 must be > 0"),
        (f"timestamp,pue\n{T0},1.2\n{T0 + 900},0.99\n", 3, r"PUE 0\.99 < 1\.0"),
    ],
)
def test_pue_series_validation(tmp_path: Path, body: str, line: int, match: str) -> None:
    f = write(tmp_path / "pue.csv", body)
    with pytest.raises(ValueError, match=match) as exc:
        SeriesPue(f)
    assert f"pue.csv:{line}:" in str(exc.value)


# ---------------------------------------------------------------- embodied and SCI


def test_embodied_amortisation() -> None:
    m = EmbodiedModel(gpu_kg={"default": 150.0}, server_kg=0.0, gpus_per_server=8)
    expected = 150_000.0 * 3600.0 / (4 * 365.25 * 86400)
    assert embodied_g(m, "NVIDIA H100 80GB HBM3", 3600.0) == pytest.approx(expected)
    assert expected == pytest.approx(4.2779, abs=1e-4)
    arr = embodied_g(m, "x", np.array([0.0, 3600.0, 7200.0]))
    assert isinstance(arr, np.ndarray) and arr == pytest.approx([0.0, expected, 2 * expected])
    # shipped defaults: A100 143 kg + 3000 kg server / 8 GPUs, 4 years
    d = load_embodied(None)
    assert d.gpu_kg["default"] == 150 and d.gpu_kg["A100"] == 143 and d.server_kg == 3000
    assert d.gpus_per_server == 8 and d.lifespan_years == 4.0
    assert embodied_g(d, "NVIDIA A100-SXM4-80GB", SECONDS_PER_YEAR * 4) == pytest.approx((143 + 375) * 1000)
    assert embodied_g(d, "NVIDIA H100", SECONDS_PER_YEAR) == pytest.approx((150 + 375) * 1000 / 4)


def test_embodied_overrides_and_validation() -> None:
    m = load_embodied({"gpu_kg": {"H100": 200, "H100 NVL": 250}, "server_kg": 1000, "gpus_per_server": 4,
                       "lifespan_years": 5})
    assert m.gpu_kg_for("NVIDIA H100 NVL") == 250  # longest key wins
    assert m.gpu_kg_for("nvidia h100 80gb hbm3") == 200
    assert m.gpu_kg_for("Tesla V100") == 150
    assert m.per_gpu_kg("H100 SXM") == 450
    assert m.sources["gpu:H100"] == "operator override"
    with pytest.raises(ValueError, match="unknown embodied override"):
        load_embodied({"server": 1})
    with pytest.raises(ValueError, match="default"):
        EmbodiedModel(gpu_kg={"A100": 1.0}, server_kg=0, gpus_per_server=1)
    with pytest.raises(ValueError, match="gpus_per_server"):
        EmbodiedModel(gpu_kg={"default": 1.0}, server_kg=0, gpus_per_server=0)


def test_sci_formula() -> None:
    assert sci_g(2.0, 300.0, 50.0) == pytest.approx(650.0)
    assert sci_g(2.0, 300.0, 50.0, functional_units=1000) == pytest.approx(0.65)
    with pytest.raises(ValueError, match="R"):
        sci_g(1.0, 1.0, 1.0, functional_units=0)
    with pytest.raises(ValueError):
        sci_g(-1.0, 1.0, 1.0)


# ---------------------------------------------------------------- emissions, market, equivalences


def test_emissions_known_value_and_units() -> None:
    # 1 kWh of IT energy at PUE 1.5 in DE -> 1.5 kWh * 342.1 g
    assert emissions_g(np.array([J_PER_KWH]), np.array([342.1]), 1.5) == pytest.approx([513.15])
    assert kwh(7.2e6) == 2.0 and kwh(np.array([3.6e6])).tolist() == [1.0]
    assert emissions_g(J_PER_KWH, 100.0, np.array([1.0, 2.0])).tolist() == [100.0, 200.0]


finite = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    e=st.lists(finite, min_size=1, max_size=20),
    intensity=st.floats(min_value=0, max_value=2000),
    pue=st.floats(min_value=1.0, max_value=3.0),
    a=st.floats(min_value=0, max_value=1e3),
)
def test_emissions_linear_and_non_negative(e: list[float], intensity: float, pue: float, a: float) -> None:
    energy = np.array(e)
    base = emissions_g(energy, intensity, pue)
    assert np.all(base >= 0)
    assert np.allclose(emissions_g(a * energy, intensity, pue), a * base, rtol=1e-12, atol=1e-9)
    half = emissions_g(energy / 2, intensity, pue)
    assert np.allclose(half + half, base, rtol=1e-12, atol=1e-9)
    assert base.sum() == pytest.approx(float(emissions_g(energy.sum(), intensity, pue)), rel=1e-9, abs=1e-9)


def test_market_intensity() -> None:
    loc = np.array([300.0, 350.0])
    same = market_intensity(loc, None)
    assert same.tolist() == [300.0, 350.0] and same is not loc
    assert market_intensity(loc, 25.0).tolist() == [25.0, 25.0]
    assert "equal location-based" in market_basis_note(None)
    assert "25" in market_basis_note(25.0)
    with pytest.raises(ValueError):
        market_intensity(loc, -1.0)


def test_equivalences() -> None:
    eq = {d["name"]: d for d in equivalences(1.75)}
    assert list(eq) == ["car_km", "train_km", "flight_km", "tree_months"]
    assert eq["car_km"]["value"] == pytest.approx(10.0) and eq["car_km"]["unit"] == "km"
    assert eq["train_km"]["value"] == pytest.approx(1750 / 41)
    assert eq["flight_km"]["value"] == pytest.approx(1750 / 171)
    assert eq["tree_months"]["value"] == pytest.approx(1750 / 917)
    assert all("Green Algorithms" in d["source"] for d in eq.values())
    with pytest.raises(ValueError):
        equivalences(-1)
    assert math.isclose(equivalences(0)[0]["value"], 0.0)


def test_package_imports_nothing_else_from_greenwatch() -> None:
    code = (
        "import sys, greenwatch.carbon\n"
        "print(sorted(m for m in sys.modules if m.startswith('greenwatch.') "
        "and not m.startswith('greenwatch.carbon')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
