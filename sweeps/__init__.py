"""sweeps: Optuna searches over kdcore training runs, tracked in MLflow, and the API to query them.

    from sweeps import trials, best, pareto, studies, comparison, verdict_line, load_student
    df = trials("digits")                               # one row per trial, real dtypes
    best("digits", where="student_params < 20000")      # the best COMPLETE trial by best_val_acc (a row)
    model = load_student("digits", best("digits")["number"])
    print(verdict_line(comparison("digits")))           # does KD pay? gain, 95% CI, paired seeds
    export_student("digits", "student.pt2", int8=True)  # loads with torch.export.load alone
    compress_trial("digits", prune=0.5, bits=8)         # seed 002: pruned, QAT-KD, each step an MLflow run
    federate_trial("digits", clients=4, rounds=20)      # seed 004: FedAvg rounds from the best student

Selection is on validation only; test_acc is the chosen trial's held-out estimate. The *_acc numbers
hold the task's score: accuracy, or Recall@1 for an embedding task (the study's ``kdsweep.score``).
"""

from sweeps.export import export_student
from sweeps.pipelines.compress import compress_trial
from sweeps.pipelines.federate import federate_trial
from sweeps.query.summary import compare, comparison, comparison_line, studies, verdict_line
from sweeps.query.trials import best, load_run_student, load_student, pareto, trials, update_pareto_tags, where
from sweeps.report.html import write_report

__all__ = [
    "best",
    "compare",
    "comparison",
    "comparison_line",
    "compress_trial",
    "export_student",
    "federate_trial",
    "load_run_student",
    "load_student",
    "pareto",
    "studies",
    "trials",
    "update_pareto_tags",
    "verdict_line",
    "where",
    "write_report",
]
