"""Attribution: turns a batch's samples into energy per GPU, per job and unallocated, priced in CO2.

Entry point: :func:`account_block`.  Formulas are explained in docs/methodology.md.
"""

from greenwatch.attribution.ledger import (
    AttributionSettings,
    BlockLedger,
    CarbonContext,
    GpuLine,
    JobLine,
    account_block,
)

__all__ = ["AttributionSettings", "BlockLedger", "CarbonContext", "GpuLine", "JobLine", "account_block"]
