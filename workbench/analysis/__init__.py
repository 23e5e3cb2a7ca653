"""The analysis layer: tracked metrics (MLflow) -> statistics, tables, figures, report.

Entry points (each takes explicit arguments; the CLI verbs ``collect``, ``tables``,
``figures`` and ``report`` call them)::

    from workbench.analysis import load_runs, collect, Runs, write_tables, write_figures, write_report

    runs = load_runs("sqlite:///results/mlflow.db", "sgopd-mini")   # or Runs.read(snapshot_dir)
    collect(uri, "sgopd-mini", "results/analysis/sgopd-mini")       # load_runs + Runs.save
    write_tables(runs, "reports/tables")                            # table{1,2,3}.{md,tex,csv}
    write_figures(runs, "reports/figures")                          # fig*.{png,pdf}
    write_report(runs, "reports")                                   # reports/REPRODUCTION.md
    evaluate_claims(runs)                                           # verdicts with intervals
    write_casestudy("casestudy.json", "reports/casestudy.html")

Modules: ``load`` (MLflow -> pandas), ``paper`` (``experiments/paper.yaml``), ``stats``
(bootstrap, verdicts), ``tables``, ``figures``, ``report``, ``casestudy``, ``synthetic``
(a fake grid for tests and timing). Names are imported lazily so that importing this
package stays cheap (pandas and matplotlib load on first use).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Runs": "load",
    "load_runs": "load",
    "collect": "load",
    "Paper": "paper",
    "load_paper": "paper",
    "Estimate": "stats",
    "bootstrap": "stats",
    "mean_ci": "stats",
    "paired_difference": "stats",
    "evaluate_claims": "stats",
    "evaluate_premises": "premises",
    "verdict": "stats",
    "table1": "tables",
    "table2": "tables",
    "table3": "tables",
    "make_tables": "tables",
    "write_tables": "tables",
    "make_figures": "figures",
    "write_figures": "figures",
    "FIGURES": "figures",
    "write_report": "report",
    "render_casestudy": "casestudy",
    "write_casestudy": "casestudy",
}

__all__ = [
    "FIGURES",
    "Estimate",
    "Paper",
    "Runs",
    "bootstrap",
    "collect",
    "evaluate_claims",
    "evaluate_premises",
    "load_paper",
    "load_runs",
    "make_figures",
    "make_tables",
    "mean_ci",
    "paired_difference",
    "render_casestudy",
    "table1",
    "table2",
    "table3",
    "verdict",
    "write_casestudy",
    "write_figures",
    "write_report",
    "write_tables",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"workbench.analysis.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'workbench.analysis' has no attribute {name!r}")
