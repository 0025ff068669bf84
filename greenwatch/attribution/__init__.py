"""Attribution: turns a batch's samples into energy per GPU, per job and unallocated, priced in CO2.

Entry points: :func:`account_blocks` (many blocks in one pass, the collector) and
:func:`account_block` (one block, as a :class:`BlockLedger`).  Formulas are explained in docs/methodology.md.
"""

from greenwatch.attribution.ledger import (
    AttributionSettings,
    BlockLedger,
    CarbonContext,
    GpuLine,
    JobLine,
    BLOCK_VALUES,
    GPU_SUMMARY,
    JOB_VALUES,
    PAIR_VALUES,
    LedgerInput,
    LedgerTable,
    account_block,
    account_blocks,
)

__all__ = ["AttributionSettings", "BlockLedger", "CarbonContext", "GpuLine", "JobLine", "LedgerInput", "LedgerTable",
           "BLOCK_VALUES", "GPU_SUMMARY", "JOB_VALUES", "PAIR_VALUES", "account_block", "account_blocks"]
