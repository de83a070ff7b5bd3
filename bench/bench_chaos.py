"""SIGKILL ``kdsweep run`` at random and at chosen moments, then count what survived: the figures
in docs/reliability.md.

One study in one store lives through every kill. Each step starts ``kdsweep run`` (``--jobs 1``
or ``--jobs 2``, ``--n-trials 3 --repeats 2`` so that some runs reach the KD verdict's repeats)
and kills it:

- ``random``: after a random delay, the whole process group, or for ``--jobs 2`` the parent alone
  (its workers must then stop by themselves within a few seconds). Half the delays count from the
  start (0.5 to 12 s: start-up, teacher, study creation, reaping, trials, repeats), half from the
  first epoch checkpoint this run writes (0 to 2 s: mid-trial);
- ``chosen``: stopped for good at a crash window with ``KDSWEEP_TEST_PAUSE_AT`` (sweeps/_pause.py):
  ``asked``, ``reap.enqueued``, ``trial.finished``, ``journal.locked``;
- ``torn``: not a kill: a record cut mid-write is appended to the journal, as a crash or a full
  disk leaves it.

After each step the journal must still open, and no trial seen COMPLETE may have changed. A final
run goes to the end; then the invariants: 0 RUNNING trials, 0 RUNNING runs, every lost trial
re-run exactly once, no epoch checkpoint or lock left behind, no run stalled on a lock.

    python bench/bench_chaos.py [--random 20] [--chosen 2] [--torn 2] [--seed 0] [--store DIR]
    python bench/bench_chaos.py --random-only --repo /path/to/an/older/checkout   # a before/after
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POINTS = ("asked", "reap.enqueued", "trial.finished", "journal.locked")
TORN = b'{"op_code":8,"worker_id":"cut-by-a-crash","trial_id":'
STUDY = "chaos"
SWEEP = "train:\n  epochs: 12\n  batch_size: 16\n  patience: 0\n"


@dataclass
class Step:
    kind: str  # random | chosen | torn
    what: str  # "group" / "parent" / a pause point / "torn"
    jobs: int = 1
    delay_s: float = 0.0
    after_epoch: bool = False  # random: the delay counts from this run's first epoch checkpoint
    exit_code: int | None = None  # of the run, when it ended before the kill
    reached: bool = True  # chosen: the point was reached; random: the process was still alive
    orphans_exit_s: float | None = None  # parent kills: how long its workers lived on
    journal_ok: bool = True
    complete_kept: bool = True
    stalled: bool = False
    note: str = ""


@dataclass
class Summary:
    kills_tried: int = 0  # runs killed (a run that ended before its kill is not counted)
    kills_survived: int = 0
    chosen_kills: int = 0  # at a crash window (KDSWEEP_TEST_PAUSE_AT)
    parent_kills: int = 0  # the --jobs 2 parent alone
    mid_trial_kills: int = 0  # within 2 s after the run's first epoch checkpoint
    torn_injected: int = 0
    torn_repaired: int = 0
    complete_trials: int = 0
    complete_lost: int = 0
    lost_trials: int = 0
    lost_rerun_once: int = 0
    lost_mid_trial: int = 0  # lost after an epoch (so with a checkpoint to resume from)
    resumed_from_checkpoint: int = 0
    running_trials_after: int = 0
    running_runs_after: int = 0
    checkpoints_left: int = 0
    locks_left: int = 0
    stalls: int = 0
    orphan_workers_max_s: float = 0.0
    final_exit: int | None = None
    steps: list[dict] = field(default_factory=list)


def env(repo: Path, pause: str | None = None, marker: Path | None = None) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KDSWEEP_STORE")}
    out["PYTHONPATH"] = str(repo)
    out["PYTHONUNBUFFERED"] = "1"
    if pause:
        out["KDSWEEP_TEST_PAUSE_AT"], out["KDSWEEP_TEST_PAUSE_FILE"] = pause, str(marker)
    return out


def start(repo: Path, store: Path, sweep: Path, jobs: int, log: Path, pause: str | None = None,
          marker: Path | None = None,
          extra: tuple[str, ...] = ("--n-trials", "3", "--repeats", "2", "--budget", "120s")):
    args = [sys.executable, "-m", "cli.main", "run", "--task", "digits", "--config", str(sweep), "--store", str(store),
            "--study", STUDY, "--jobs", str(jobs), *extra]
    out = log.open("w")
    return subprocess.Popen(args, cwd=store.parent, env=env(repo, pause, marker), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True), out


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except (OSError, IndexError):
        return False


def study_trials(repo: Path, store: Path) -> tuple[bool, list[dict]]:
    """(journal opens, [{number, state, value, attrs}]) read in a fresh process with ``repo``'s code."""
    code = ("import json,sys,optuna;from sweeps.tracking.storage import open_storage;"
            "optuna.logging.set_verbosity(optuna.logging.ERROR);"
            f"s=optuna.load_study(study_name='{STUDY}',storage=open_storage(sys.argv[1]));"
            "print(json.dumps([dict(number=t.number,state=t.state.name,value=t.value,attrs=t.user_attrs) "
            "for t in s.get_trials(deepcopy=False)],default=str))")
    done = subprocess.run([sys.executable, "-c", code, str(store / "optuna.journal")], env=env(repo),
                          capture_output=True, text=True, cwd=store.parent)
    if done.returncode != 0:
        return ("KeyError" in done.stderr and "Record does not exist" in done.stderr), []
    return True, json.loads(done.stdout.strip().splitlines()[-1])


def kill_step(step: Step, repo: Path, store: Path, sweep: Path, logs: Path, index: int) -> str:
    log = logs / f"{index:02d}-{step.kind}-{step.what}.log"
    if step.kind == "chosen":
        marker = logs / f"{index:02d}.paused"
        process, out = start(repo, store, sweep, step.jobs, log, step.what, marker)
        deadline = time.time() + 60
        while not marker.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        step.reached = marker.exists()
    else:
        began = time.time()
        process, out = start(repo, store, sweep, step.jobs, log)
        if step.after_epoch:
            folder = store / "checkpoints" / STUDY
            while process.poll() is None and time.time() - began < 60 and not any(
                    p.stat().st_mtime > began for p in folder.glob("*.pt") if p.exists()):
                time.sleep(0.05)
        time.sleep(step.delay_s)
        step.reached = process.poll() is None
    workers = children(process.pid) if step.jobs > 1 else []
    if process.poll() is None:
        if step.what == "parent":
            os.kill(process.pid, signal.SIGKILL)
            killed = time.time()
            while any(alive(w) for w in workers) and time.time() - killed < 60:
                time.sleep(0.1)
            step.orphans_exit_s = round(time.time() - killed, 1)
            for w in workers:
                if alive(w):
                    os.kill(w, signal.SIGKILL)
        else:
            os.killpg(process.pid, signal.SIGKILL)
    else:
        step.exit_code = process.returncode
    process.wait()
    out.close()
    text = log.read_text(errors="replace")
    step.stalled = "taking longer" in text or "Forcibly" in text
    if step.exit_code not in (None, 0):
        step.note = text.strip().splitlines()[-1][:200] if text.strip() else ""
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=20, help="kills after a random delay")
    parser.add_argument("--chosen", type=int, default=2, help="kills at each crash window")
    parser.add_argument("--torn", type=int, default=2, help="torn records appended to the journal")
    parser.add_argument("--random-only", action="store_true", help="no chosen kills (an older checkout has no hook)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose kdsweep runs")
    parser.add_argument("--template", type=Path, help="a store with the digits teacher to copy (else one is made)")
    parser.add_argument("--out", type=Path, help="write the summary as JSON here")
    options = parser.parse_args()
    rng = random.Random(options.seed)

    root = Path(tempfile.mkdtemp(prefix="kdsweep-chaos-"))
    store, logs, sweep = root / "store", root / "logs", root / "chaos.yaml"
    logs.mkdir()
    sweep.write_text(SWEEP)
    if options.template:
        shutil.copytree(options.template, store)
    steps = []
    for i in range(options.random):
        jobs, in_trial = rng.choice([1, 2]), i % 2 == 1
        steps.append(Step("random", rng.choice(["group", "parent"]) if jobs == 2 else "group", jobs,
                          round(rng.uniform(0, 2) if in_trial else rng.uniform(0.5, 12), 1), in_trial))
    if not options.random_only:
        steps += [Step("chosen", point) for point in POINTS for _ in range(options.chosen)]
    steps += [Step("torn", "torn") for _ in range(options.torn)]
    rng.shuffle(steps)
    print(f"store {store}; {len(steps)} steps; code from {options.repo}", flush=True)

    summary = Summary()
    seen: dict[int, float] = {}
    torn_pending = 0
    for index, step in enumerate(steps):
        if step.kind == "torn":
            with open(store / "optuna.journal", "ab") as journal:
                journal.write(TORN)
            summary.torn_injected += 1
            torn_pending += 1
        else:
            text = kill_step(step, options.repo, store, sweep, logs, index)
            summary.torn_repaired += min(torn_pending, text.count("dropped a torn last record"))
            torn_pending -= min(torn_pending, text.count("dropped a torn last record"))
            ok, trials = study_trials(options.repo, store)
            step.journal_ok = ok
            now = {t["number"]: t["value"] for t in trials if t["state"] == "COMPLETE"}
            step.complete_kept = all(now.get(n) == v for n, v in seen.items())
            seen |= now
        summary.steps.append(asdict(step))
        print(f"{index:2d} {step.kind:6s} {step.what:15s} jobs {step.jobs} delay {step.delay_s:4.1f}s"
              f"{' after an epoch' if step.after_epoch else ' from start   '} "
              f"reached={step.reached} exit={step.exit_code} journal_ok={step.journal_ok} "
              f"complete_kept={step.complete_kept} stalled={step.stalled} orphans_s={step.orphans_exit_s} {step.note}",
              flush=True)

    final_log = logs / "final.log"
    process, out = start(options.repo, store, sweep, 1, final_log,
                         extra=("--n-trials", "4", "--repeats", "0", "--budget", "300s"))
    summary.final_exit = process.wait()
    out.close()
    final_text = final_log.read_text(errors="replace")
    summary.torn_repaired += min(torn_pending, final_text.count("dropped a torn last record"))
    summary.stalls = sum(s["stalled"] for s in summary.steps) + ("taking longer" in final_text)
    ok, trials = study_trials(options.repo, store)
    # A kill survived when the journal still opened after it, no COMPLETE trial changed, the run
    # after it did not stall on a lock, and the final run ended well with nothing left RUNNING.
    kills = [s for s in summary.steps if s["kind"] != "torn" and s["exit_code"] is None]
    summary.kills_tried = len(kills)
    summary.chosen_kills = sum(s["kind"] == "chosen" for s in kills)
    summary.parent_kills = sum(s["what"] == "parent" for s in kills)
    summary.mid_trial_kills = sum(s["after_epoch"] for s in kills)
    now = {t["number"]: t["value"] for t in trials if t["state"] == "COMPLETE"}
    summary.complete_trials = len(now)
    summary.complete_lost = sum(now.get(n) != v for n, v in seen.items())
    lost = [t for t in trials if t["attrs"].get("stop_reason") in ("worker_lost", "interrupted")]
    summary.lost_trials = len(lost)
    summary.lost_rerun_once = sum(sum(o["attrs"].get("kdsweep.resume_of") == t["number"] for o in trials) == 1
                                  for t in lost)
    summary.lost_mid_trial = sum("epoch" in t["attrs"] for t in lost)
    summary.resumed_from_checkpoint = sum("resumed_from_epoch" in t["attrs"] for t in trials)
    summary.running_trials_after = sum(t["state"] == "RUNNING" for t in trials)
    summary.running_runs_after = running_runs(options.repo, store)
    summary.checkpoints_left = len(list((store / "checkpoints" / STUDY).glob("*.pt")))
    summary.locks_left = int(os.path.lexists(str(store / "optuna.journal") + ".lock"))
    summary.orphan_workers_max_s = max((s["orphans_exit_s"] or 0.0) for s in summary.steps)
    clean = (ok and summary.final_exit == 0 and not summary.running_trials_after and not summary.running_runs_after
             and not summary.locks_left)
    survived = [s for s in kills if s["journal_ok"] and s["complete_kept"] and not s["stalled"]]
    summary.kills_survived = len(survived) if clean else 0
    print(json.dumps({k: v for k, v in asdict(summary).items() if k != "steps"}, indent=1))
    if options.out:
        options.out.write_text(json.dumps(asdict(summary), indent=1))


def running_runs(repo: Path, store: Path) -> int:
    code = ("import sys;from mlflow import MlflowClient;from mlflow.entities import ViewType;"
            "c=MlflowClient(sys.argv[1]);e=c.get_experiment_by_name(sys.argv[2]);"
            "print(len(c.search_runs([e.experiment_id],\"attributes.status = 'RUNNING'\","
            "run_view_type=ViewType.ACTIVE_ONLY)))")
    done = subprocess.run([sys.executable, "-c", code, f"sqlite:///{store / 'mlflow.db'}", STUDY], env=env(repo),
                          capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else -1


if __name__ == "__main__":
    main()
