"""Campaigns: the jobs of one model as one set, with its totals and documentation outputs.

- :mod:`~greenwatch.campaigns.registry`: the append-only registry (membership edits, audit trail);
- :mod:`~greenwatch.campaigns.membership`: which job runs belong (tag, rules, by hand), phase, state;
- :mod:`~greenwatch.campaigns.source`: job summaries from embedded stores or InfluxDB;
- :mod:`~greenwatch.campaigns.model`: the sums (:class:`CampaignReport`);
- :mod:`~greenwatch.campaigns.render` and :mod:`~greenwatch.campaigns.documents`: report formats,
  the EU AI Act energy section and the Hugging Face model card block.
"""

from __future__ import annotations

from greenwatch.campaigns.membership import Member, members
from greenwatch.campaigns.model import CampaignReport, Figures, build_campaign_report
from greenwatch.campaigns.registry import Campaign, CampaignError, CampaignRegistry, JobRef, Rule

__all__ = ["Campaign", "CampaignError", "CampaignRegistry", "JobRef", "Rule", "Member", "members",
           "CampaignReport", "Figures", "build_campaign_report"]
