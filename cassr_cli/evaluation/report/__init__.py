"""The reports of an evaluation, all written atomically into OUT:

* ``metrics.json`` and ``metrics.csv`` (:mod:`.files`);
* ``report.html`` with the crops in ``report/`` (:mod:`.html`);
* ``sheet.png``, the crops as a labelled contact sheet (:mod:`.sheet`).

The crop of each picture is chosen by :mod:`.crops`. The stderr table is drawn by the command line
from :func:`cassr_cli.evaluation.results.summary_rows`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cassr_cli.evaluation.results import EvalResults


def write_reports(results: EvalResults) -> None:
    """Write metrics.json, metrics.csv, report.html and sheet.png for ``results``."""
    from cassr_cli.evaluation.report.files import write_csv, write_json
    from cassr_cli.evaluation.report.html import write_html
    from cassr_cli.evaluation.report.sheet import write_sheet

    write_json(results)
    write_csv(results)
    write_html(results)
    write_sheet(results)
