"""The PDF report of an analysed image (reportlab)."""

from bcd_node.report.pdf import NOT_FOR_CLINICAL_USE, STAGES, ReportData, render_report

__all__ = ["NOT_FOR_CLINICAL_USE", "STAGES", "ReportData", "render_report"]
