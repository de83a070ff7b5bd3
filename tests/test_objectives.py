"""Objectives and limits: parsing, directions, violations (Optuna's <= 0 convention)."""

from __future__ import annotations

import pickle

import pytest

from kdcore import ConfigError
from sweeps.search.objectives import COSTS, Objective, parse_size


@pytest.mark.parametrize(("text", "expected"), [("50000", 50_000), ("50KB", 50_000), ("48KiB", 49_152),
                                                ("1.5MB", 1_500_000), ("2 mib", 2 * 1024**2), (4096, 4096)])
def test_sizes_take_decimal_and_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "KB", "-5KB", "0", "5 GB", "1e3", "five"])
def test_a_bad_size_is_one_line_naming_it(text):
    with pytest.raises(ConfigError, match=r"invalid size .* use a positive number of bytes"):
        parse_size(text)


def test_accuracy_is_one_direction_and_pareto_two():
    assert Objective.parse().directions == ["maximize"]
    pareto = Objective.parse("pareto")
    assert pareto.directions == ["maximize", "minimize"]
    assert pareto.cost == "params" and pareto.cost_column == "student_params"  # the default cost
    assert Objective.parse("pareto", "latency").cost_column == "latency_ms_b1"
    assert set(COSTS) == {"params", "flops", "latency", "int8_size", "train_time"}


@pytest.mark.parametrize(("args", "limits", "message"), [
    (("speed",), {}, "unknown objective 'speed' \\(choose from accuracy, pareto\\)"),
    (("accuracy", "params"), {}, "--cost params needs --objective pareto"),
    (("pareto", "energy"), {}, "unknown cost 'energy' \\(choose from params, flops, latency, int8_size, train_time\\)"),
    (("accuracy",), {"max_params": -3}, "--max-params -3: must be a positive number"),
    (("accuracy",), {"max_latency_ms": float("nan")}, "--max-latency-ms nan: must be a positive number"),
    (("accuracy",), {"min_retention": 98}, "--min-retention 98: must be a fraction"),
    (("accuracy",), {"max_size": "big"}, "invalid size 'big'"),
])
def test_bad_objectives_and_limits_are_refused(args, limits, message):
    with pytest.raises(ConfigError, match=message):
        Objective.parse(*args, **limits)


def test_constraints_are_positive_only_for_broken_limits():
    goal = Objective.parse("accuracy", max_params=1000, max_size="4KB", min_retention=0.98)
    assert [name for name, _ in goal.limits] == ["max_params", "max_size", "min_retention"]
    fits = {"student_params": 800, "student_size_bytes": 3200, "val_retention": 0.99}
    assert all(v <= 0 for v in goal.constraints(fits).values()) and goal.broken(fits) == []
    too_big = {"student_params": 1200, "student_size_bytes": 4800, "val_retention": 0.9}
    assert goal.constraints(too_big) == pytest.approx({"max_params": 200, "max_size": 800, "min_retention": 0.08})
    assert goal.broken(too_big)[0] == "max_params (student_params 1200 > 1000)"
    assert goal.broken(too_big)[2] == "min_retention (val_retention 0.9 < 0.98)"
    # Before training the retention is unknown: only the limits already measurable are constraints.
    assert set(goal.constraints({"student_params": 800, "student_size_bytes": 3200})) == {"max_params", "max_size"}


def test_values_are_what_optuna_is_told():
    attrs = {"best_val_acc": 0.9, "student_params": 1234, "train_time_s": 5.0}
    assert Objective.parse().values(attrs) == 0.9
    assert Objective.parse("pareto", "params").values(attrs) == [0.9, 1234.0]
    assert Objective.parse("pareto", "train_time").values(attrs) == [0.9, 5.0]


def test_an_objective_travels_to_worker_processes_and_describes_itself():
    goal = Objective.parse("pareto", "flops", max_params=5000)
    assert pickle.loads(pickle.dumps(goal)) == goal
    assert goal.describe() == "pareto vs flops (max_params 5000)"
    assert Objective.parse().describe() == "accuracy"


def test_tpe_learns_the_feasible_region_from_the_trials_constraints():
    # Maximise x under the limit x <= 0.3, set as each trial's constraint the way a sweep's trial
    # sets it: the plan's TPE sampler must learn to stay near and below 0.3 where, unconstrained,
    # it climbs towards 1.
    import optuna

    from sweeps.search.plan import SweepPlan

    goal = Objective.parse("accuracy", max_params=0.3)
    plan = SweepPlan(study="s", task="digits", store_root="", tracking_uri="", storage_url="", space=None, fixed={},
                     sampler="tpe", pruner="none", seed=0, budget_s=60, started_at=0, min_epochs=1, objective=goal)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def later_xs(constrained: bool) -> list[float]:
        study = optuna.create_study(direction="maximize", sampler=plan.sampler_for(0))

        def objective(trial):
            x = trial.suggest_float("x", 0, 1)
            for name, value in (goal.constraints({"student_params": x}) if constrained else {}).items():
                trial.set_constraint(name, value)
            return x

        study.optimize(objective, n_trials=40)
        return [t.params["x"] for t in study.trials[20:]]

    assert sum(x <= 0.5 for x in later_xs(constrained=True)) >= 15
    assert sum(x <= 0.5 for x in later_xs(constrained=False)) <= 5


def test_a_sweep_file_takes_a_size_in_bytes_or_with_a_unit():
    from kdcore import make_config
    from sweeps.search.sweep_file import SweepFile

    for size in (50_000, "50KB"):
        assert parse_size(make_config(SweepFile, max_size=size).max_size) == 50_000
