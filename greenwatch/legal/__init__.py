"""What the law asks a European data centre to report, from greenwatch's measurements.

* customer statements (EnEfG §15): each customer's attributable IT and facility energy,
  emissions, GPU-hours, idle-allocated waste, per month, with the unallocated rest, so that
  customers plus unallocated equal the measured IT energy (:mod:`.statements`);
* the site KPI report (Delegated Regulation (EU) 2024/1364, EnEfG §11-13): PUE, REF, ERF and
  WUE along EN 50600-4-x from the facility meters of ``[facility]``, greenwatch's coverage of
  the IT meter, and the EnEfG §11 limits for the site's start of operation (:mod:`.sitereport`).

Module per responsibility: :mod:`.period` (reporting periods), :mod:`.meters` (meter series
and their gaps), :mod:`.kpi` (the formulas), :mod:`.enefg` (the legal limits),
:mod:`.sitedata` (sums from InfluxDB rollups or the embedded store), :mod:`.render` (output
formats), :mod:`.cli` (the ``statement`` and ``site-report`` commands).  docs/eu-reporting.md
cites the sources.
"""
