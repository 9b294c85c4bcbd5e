"""Run reports: report.html with plots, built from a run folder's files."""

from speech_emotion.reports.matrix_report import build_matrix_report
from speech_emotion.reports.run_report import build_report

__all__ = ["build_matrix_report", "build_report"]
