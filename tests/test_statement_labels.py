"""The customer statement's totals and the site report's coverage note name the rest of the node
only where node meters were read: the rendered labels must say what the figures contain."""

from __future__ import annotations

import datetime as dt

from greenwatch.attribution import AttributionSettings
from greenwatch.collector.core import Collector
from greenwatch.config import FacilityConfig
from greenwatch.legal.period import period_from_args
from greenwatch.legal.render import render
from greenwatch.legal.sitedata import EmbeddedSiteData
from greenwatch.legal.sitereport import build_site_report
from greenwatch.legal.statements import build_statements
from greenwatch.storage.embedded import EmbeddedStore
from greenwatch.transport.wire import encode

from helpers import carbon_ctx
from test_nodepower_collector import T0, batch

MONTH = dt.datetime.fromtimestamp(T0 / 1e6, dt.timezone.utc).strftime("%Y-%m")


def _statement_markdown(meter_j: float | None) -> str:
    store = EmbeddedStore(":memory:")
    assert Collector(AttributionSettings("equal", 60.0), carbon_ctx(300.0, 1.5, 40.0), store).handle(
        encode(batch(meter_j)))
    doc = build_statements(EmbeddedSiteData(store), period_from_args(None, MONTH, None, None), unit="user")
    return render(doc, "md")


def test_metered_statement_says_its_totals_include_the_rest_of_the_node():
    text = _statement_markdown(1800.0)
    assert "| unallocated (idle GPUs, host CPU and rest of the node of no job) |" in text
    assert "| measured IT energy (GPU + host CPU + rest of the node) |" in text


def test_unmetered_statement_claims_no_rest_of_the_node():
    text = _statement_markdown(None)
    assert "| unallocated (idle GPUs, host CPU of no job) |" in text
    assert "| measured IT energy (GPU + host CPU) |" in text
    assert "rest of the node of no job" not in text


def _site_report_markdown(meter_j: float | None) -> str:
    store = EmbeddedStore(":memory:")
    assert Collector(AttributionSettings("equal", 60.0), carbon_ctx(300.0, 1.5, 40.0), store).handle(
        encode(batch(meter_j)))
    doc = build_site_report(FacilityConfig(), period_from_args(None, MONTH, None, None), EmbeddedSiteData(store))
    return render(doc, "md")


def test_site_report_coverage_names_the_rest_of_the_node_only_where_a_meter_was_read():
    assert "host CPU and the node meters' rest of the node" in _site_report_markdown(1800.0)
    plain = _site_report_markdown(None)
    assert "(GPU counters and host CPU)" in plain
    assert "rest of the node" not in plain
