"""A campaign's report from a store, and its outputs written to files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

from greenwatch.campaigns.documents import ai_act_section, model_card
from greenwatch.campaigns.membership import influx_condition, members
from greenwatch.campaigns.model import REST_OF_NODE, CampaignReport, build_campaign_report
from greenwatch.campaigns.months import split_run
from greenwatch.campaigns.registry import Campaign
from greenwatch.campaigns.render import FORMATS, render_campaign
from greenwatch.campaigns.source import EmbeddedSummaries, InfluxSummaries, RunSpan, SummarySource
from greenwatch.reports.jobdata import run_start_s
from greenwatch.reports.source import SPAN_MARGIN_S

__all__ = ["campaign_report", "report_from_source", "render_output", "write_outputs", "OUTPUT_NAMES"]

OUTPUT_NAMES = {"md": "campaign.md", "html": "campaign.html", "json": "campaign.json", "csv": "campaign.csv",
                "ai-act": "ai-act-energy.md", "model-card": "model-card.md"}


def report_from_source(campaign: Campaign, source: SummarySource, *, intensity_source: str = "",
                       market_note: str = "") -> CampaignReport:
    """Read the summaries, pick the campaign's runs, sum them."""
    chosen = members(campaign, source.summaries(influx_condition(campaign)))
    models = source.gpu_models({m.cluster for m in chosen}) if chosen else []
    spans = dict(zip(_spans([m.summary for m in chosen]), chosen))
    for span, rest in source.rest_of_node(list(spans)).items():
        spans[span].summary = {**spans[span].summary, REST_OF_NODE: rest}
    parts = {}
    for m in chosen:   # only the runs that span a month boundary read their records
        split = split_run(m.summary, source)
        if split:
            parts[(m.cluster, m.job, int(m.summary["time_ns"]))] = split
    return build_campaign_report(campaign, chosen, data_source=source.description, intensity_source=intensity_source,
                                 market_note=market_note, gpu_models=models, month_parts=parts)


def _spans(summaries: list[dict]) -> list[RunSpan]:
    """Each run's cluster, job and span, widened as the per-job report widens it (SPAN_MARGIN_S),
    but never into another run of the same job id: two runs of a requeued job closer than twice
    the margin split the time between them, so each record is summed into one run only."""
    margin = int(SPAN_MARGIN_S * 1e9)
    bounds = []
    for s in summaries:
        end = int(s["time_ns"])
        start = int(run_start_s(s) * 1e9)
        bounds.append((str(s.get("cluster", "")), str(s.get("job", "")), start, end))
    lo = [b[2] - margin for b in bounds]
    hi = [b[3] + margin for b in bounds]
    by_job: dict[tuple[str, str], list[int]] = {}
    for i, b in enumerate(bounds):
        by_job.setdefault((b[0], b[1]), []).append(i)
    for runs in by_job.values():
        runs.sort(key=lambda i: bounds[i][3])
        for one, nxt in zip(runs, runs[1:]):
            if hi[one] >= lo[nxt]:
                # Half-way between one run's end and the next one's start (its end, if they overlap).
                cut = max(bounds[one][3], (bounds[one][3] + bounds[nxt][2]) // 2)
                hi[one], lo[nxt] = min(hi[one], cut), max(lo[nxt], cut + 1)
    return [(c, j, lo[i], hi[i]) for i, (c, j, _, _) in enumerate(bounds)]


def campaign_report(campaign: Campaign, *, config: Path | None = None, dbs: Iterable[Path] = (),
                    cluster: str | None = None) -> CampaignReport:
    """The report from embedded stores (``dbs``) or from InfluxDB (the ``[influxdb]`` of ``config``)."""
    from greenwatch.carbon import market_basis_note
    from greenwatch.config import load_config
    from greenwatch.storage.embedded import EmbeddedStore
    from greenwatch.wiring import carbon_context, influx_store

    # One store named twice (or by two paths) is read once: its runs must not count twice.
    dbs = list(dict.fromkeys(Path(p).resolve() for p in dbs))
    cfg = load_config(config)
    # Runs of `greenwatch run` name the intensity they were priced with; a collector's jobs were
    # priced with the [carbon] settings of the configuration.
    intensity = ""
    market = ""
    if config is not None or not dbs:
        carbon = carbon_context(cfg)
        intensity = str(getattr(carbon.intensity, "source", type(carbon.intensity).__name__))
        market = market_basis_note(carbon.market_factor_g_per_kwh)
    if dbs:
        stores = [EmbeddedStore(p) for p in dbs]
        try:
            source: SummarySource = EmbeddedSummaries(stores)
            if cluster:
                source = _OneCluster(source, cluster)
            return report_from_source(campaign, source, intensity_source=intensity, market_note=market)
        finally:
            for s in stores:
                s.close()
    store = influx_store(cfg)
    try:
        return report_from_source(campaign, InfluxSummaries(store, cluster=cluster), intensity_source=intensity,
                                  market_note=market)
    finally:
        store.close()


class _OneCluster:
    """Only one cluster's summaries of another source."""

    def __init__(self, inner: SummarySource, cluster: str) -> None:
        self.inner, self.cluster = inner, cluster
        self.description = f"{inner.description} cluster {cluster}"

    def summaries(self, where: str = "") -> list[dict]:
        """The inner source's summaries of this cluster only."""
        return [s for s in self.inner.summaries(where) if s.get("cluster") == self.cluster]

    def gpu_models(self, clusters: Iterable[str]) -> list[str]:
        """As the inner source."""
        return self.inner.gpu_models(clusters)

    def sums_between(self, cluster: str, job: str, lo_ns: int, hi_ns: int) -> dict[str, float]:
        """As the inner source."""
        return self.inner.sums_between(cluster, job, lo_ns, hi_ns)

    def rest_of_node(self, runs: list[RunSpan]) -> dict[RunSpan, float]:
        """As the inner source."""
        return self.inner.rest_of_node(runs)


def render_output(report: CampaignReport, fmt: str) -> str:
    """One output as text: a report format, ``ai-act`` or ``model-card``."""
    if fmt == "ai-act":
        return ai_act_section(report)
    if fmt == "model-card":
        return model_card(report)
    return render_campaign(report, fmt)


def write_outputs(report: CampaignReport, fmt: str, out: Path | None) -> list[Path]:
    """Write ``fmt`` to ``out`` (every output into the directory ``out`` for ``all``); to stdout without ``out``."""
    if fmt == "all":
        if out is None:
            raise ValueError("the format 'all' writes several files: name a directory to write them into")
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in FORMATS + ("ai-act", "model-card"):
            path = out / OUTPUT_NAMES[name]
            path.write_text(render_output(report, name), encoding="utf-8")
            paths.append(path)
        return paths
    text = render_output(report, fmt)
    if out is None:
        sys.stdout.write(text)
        return []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return [out]
