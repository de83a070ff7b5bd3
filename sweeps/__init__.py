"""sweeps: Optuna searches over kdcore training runs, tracked in MLflow, and the API to query them.

    from sweeps import trials, best, pareto, studies, load_student
    df = trials("digits")                               # one row per trial, real dtypes
    best("digits", where="student_params < 20000")      # the best COMPLETE trial (a row)
    model = load_student("digits", best("digits")["number"])
"""

from sweeps.query.summary import compare, comparison, studies
from sweeps.query.trials import best, load_student, pareto, trials, update_pareto_tags, where
from sweeps.report.html import write_report

__all__ = [
    "best",
    "compare",
    "comparison",
    "load_student",
    "pareto",
    "studies",
    "trials",
    "update_pareto_tags",
    "where",
    "write_report",
]
