"""The offline HTML run report: ``data`` assembles it from the store, ``render`` writes the HTML."""

from __future__ import annotations

from sqlmodel import Session

from monitor.report.data import ReportLimits, build_report_data
from monitor.report.render import render_html, render_index

__all__ = ["ReportLimits", "build_report_data", "render_html", "render_index", "run_report_html"]


def run_report_html(session: Session, run_id: str, limits: ReportLimits | None = None) -> str:
    """The report of ``run_id`` as one self-contained HTML page (raises NotFound for an unknown run)."""
    return render_html(build_report_data(session, run_id, limits))
