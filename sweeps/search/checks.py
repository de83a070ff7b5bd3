"""Everything ``kdsweep run`` checks before it writes anything: names, storage URL, space, flags,
the task's fit to the fixed settings, the store's folder and MLflow database, and that a resumed
study keeps its task and space."""

from __future__ import annotations

import os
from pathlib import Path

from kdcore import ConfigError
from sweeps.search import overrides
from sweeps.search.leases import lease_timeout_s
from sweeps.search.plan import SweepPlan
from sweeps.search.samplers import check_names, check_objective
from sweeps.search.space import SearchSpace
from sweeps.tracking.consistency import linked_runs
from sweeps.tracking.storage import check_storage_url, default_storage_url, display_url, open_storage
from sweeps.tracking.store import Store, check_storage_path, check_study_name

MAX_SEED = 2**32 - 1  # numpy's (hence Optuna's samplers') largest seed
JOBS_PER_CORE = 4


def check_sweep(plan: SweepPlan, enqueue_presets: bool, pruner_given: bool = True) -> SearchSpace:
    """Everything that can be checked without writing: names, storage URL, space, flags, the store."""
    from kdcore import check_config, get_task

    check_study_name(plan.study)
    lease_timeout_s()  # a bad KDSWEEP_LEASE_TIMEOUT_S, before anything runs
    check_names(plan.sampler, plan.pruner)
    check_objective(plan.sampler, plan.pruner, len(plan.objective.directions), pruner_given)
    check_storage_path(plan.storage_url)
    if plan.storage_url != default_storage_url(Path(plan.store_root)):  # the default folder is created later
        check_storage_url(plan.storage_url)
    space = plan.search_space()
    # Before the task's data is read (MNIST-1D draws its signals in a fresh store): a resume of
    # another study's task is refused at once.
    check_resume_matches(plan, space)
    # The top of every range is the worst case for the checks that depend on searched values (the
    # largest data_fraction leaves the smallest transfer set; alpha 1 uses it); the task's preflight
    # builds a student at both ends of the ratio range.
    ratios = space.grid(2).get("ratio", ())
    check_config(get_task(plan.task), space.config(space.upper_ends()), ratios=ratios)
    check_limits_reachable(plan, min(ratios, default=space.config(space.upper_ends()).ratio))
    most_jobs = (os.cpu_count() or 1) * JOBS_PER_CORE
    if plan.jobs < 1 or plan.jobs > most_jobs:
        raise ConfigError(f"--jobs {plan.jobs} is not allowed: use 1 to {most_jobs} worker processes "
                          f"({JOBS_PER_CORE} per core on this machine)")
    if plan.seed < 0 or plan.seed + plan.jobs - 1 > MAX_SEED:
        raise ConfigError(f"--seed {plan.seed} is not allowed: use 0 to {MAX_SEED - plan.jobs + 1} "
                          "(worker i seeds its sampler with seed + i)")
    if plan.n_trials is not None and plan.n_trials < 1:
        raise ConfigError(f"--n-trials {plan.n_trials} is not allowed: use 1 or more")
    if plan.min_epochs < 1 or plan.min_epochs > space.max_epochs():
        raise ConfigError(f"min_epochs={plan.min_epochs} must be between 1 and the trials' epochs "
                          f"({space.max_epochs()})")
    plan.fidelity.check(plan.pruner, plan.min_epochs, space.max_epochs(), plan.fixed)
    if plan.repeats == 1 or plan.repeats < 0:
        raise ConfigError(f"--repeats {plan.repeats} is not allowed: a confidence interval needs at least 2 "
                          "pairs; use 2 or more (default 3), or 0 to skip the KD verdict")
    if plan.sampler == "grid" and enqueue_presets:
        raise ConfigError("--enqueue-presets conflicts with --sampler grid: a grid visits its own points")
    if enqueue_presets:
        overrides.preset_trials(space)  # every preset's settings must combine with the fixed ones
    store = Store(Path(plan.store_root), plan.tracking_uri)
    store.check_writable()
    store.check_database(logged_trials=len(linked_runs(plan.storage_url, plan.study)))
    store.check_reachable()
    return space


def check_worker(study: str, storage_url: str, store: Store, n_trials: int | None) -> None:
    """What `kdsweep worker` checks before it writes anything: the study exists in the storage, the
    run it joins set it up for workers, and that run's MLflow parent run is in the tracking store."""
    from kdcore import get_task
    from sweeps.search.join import PLAN_ATTR

    check_study_name(study)
    lease_timeout_s()  # a bad KDSWEEP_LEASE_TIMEOUT_S, before anything runs
    check_storage_url(storage_url)
    if n_trials is not None and n_trials < 1:
        raise ConfigError(f"--n-trials {n_trials} is not allowed: use 1 or more")
    if "://" not in storage_url and not Path(storage_url).exists():
        raise ConfigError(f"storage '{storage_url}' does not exist: give the storage the run uses")
    studies = {s.study_name: s for s in open_storage(storage_url).get_all_studies()}
    if study not in studies:
        raise ConfigError(f"no study '{study}' in storage '{display_url(storage_url)}' (it has: "
                          f"{', '.join(sorted(studies)) or 'none'}): start it with `kdsweep run --study {study} ...`")
    record = studies[study].user_attrs.get(PLAN_ATTR)
    if record is None:
        raise ConfigError(f"study '{study}' has no kdsweep.plan: it was started by a kdsweep older than `kdsweep "
                          "worker`; resume it once with `kdsweep run --study ...`, then start workers")
    get_task(record["task"])  # the task's code must be importable on this host too
    store.check_writable()
    try:
        store.client().get_run(record["parent_run_id"])
    except Exception:
        raise ConfigError(f"the study's MLflow run {record['parent_run_id']} is not in tracking store "
                          f"{display_url(store.tracking_uri)}: give the --tracking-uri the run uses") from None


def check_limits_reachable(plan: SweepPlan, smallest_ratio: float) -> None:
    """A limit on the architecture that even the smallest student breaks would reject every trial
    before training until the budget ran out: refuse it now."""
    if not any(name != "min_retention" for name, _ in plan.objective.limits):
        return
    from kdcore import get_task
    from sweeps.search.costs import student_costs

    task = get_task(plan.task)
    costs = student_costs(task.build_student(smallest_ratio), task.splits().train[0][0])
    broken = plan.objective.broken(costs)
    if broken:
        raise ConfigError(f"no student in the search space meets the limits: the smallest (ratio {smallest_ratio:g}) "
                          f"breaks {'; '.join(broken)}; loosen the limit or lower the ratio range")


def check_resume_matches(plan: SweepPlan, space: SearchSpace) -> None:
    """A study resumes only with the same task and search space (read without writing)."""
    import optuna

    if not plan.storage_url.startswith(("sqlite", "postgresql", "mysql")) and not Path(plan.storage_url).exists():
        return  # no journal yet: nothing to resume, and opening it would create the file
    if plan.storage_url.startswith("sqlite:///") and not Path(plan.storage_url.removeprefix("sqlite:///")).exists():
        return
    storage = open_storage(plan.storage_url)
    if plan.study not in {s.study_name for s in storage.get_all_studies()}:
        return
    attrs = optuna.load_study(study_name=plan.study, storage=storage).user_attrs
    if attrs.get("kdsweep.task", plan.task) != plan.task:
        import shlex

        store = Store(Path(plan.store_root), plan.tracking_uri)
        resume = shlex.join(["kdsweep", "run", "--study", plan.study,
                             *store.options(plan.storage_url, attrs["kdsweep.task"])])
        raise ConfigError(f"study '{plan.study}' was run on task '{attrs['kdsweep.task']}', not '{plan.task}': "
                          f"resume it with `{resume}`, or use another --study for task '{plan.task}'")
    if attrs.get("kdsweep.objective", "accuracy") != plan.objective.describe():
        raise ConfigError(f"study '{plan.study}' was run with objective {attrs.get('kdsweep.objective', 'accuracy')!r}, "
                          f"not {plan.objective.describe()!r}: give the same --objective, --cost and limits to "
                          "resume it, or use another --study")
    if attrs.get("kdsweep.fidelity", "epochs") != plan.fidelity.describe():
        raise ConfigError(f"study '{plan.study}' was run with --fidelity {attrs.get('kdsweep.fidelity', 'epochs')}, "
                          f"not {plan.fidelity.describe()}: its pruner compares trials that follow one schedule; "
                          "give the same --fidelity to resume it, or use another --study")
    if attrs.get("kdsweep.space", space.describe()) != space.describe():
        raise ConfigError(f"study '{plan.study}' was run with another search space "
                          f"({attrs['kdsweep.space']}): use another --study to search a new space")


