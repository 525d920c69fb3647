"""The triggers a scan report confirmed, checked against the model being purified (see
:mod:`patronus_ext.scan_report`, shared with the input monitor)."""

from ..scan_report import ScannedTriggers, read_report, triggers_from_report

__all__ = ["ScannedTriggers", "read_report", "triggers_from_report"]
