"""HTML report of a run: score distributions, bootstrap rounds, kept share per partition, sample galleries.

Library entry point (the CLI, ``curate report``, is a thin layer over it)::

    from curate.report import build_report
    res = build_report("runs/demo")          # writes runs/demo/reports/report.html
    res.path, res.sections, res.counts
"""

from curate.report.build import SECTIONS, ReportOptions, ReportResult, build_report

__all__ = ["SECTIONS", "ReportOptions", "ReportResult", "build_report"]
