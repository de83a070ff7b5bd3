"""How many torch threads a training process uses: one per job unless asked, and never, across its
jobs, more than the cores this process may use.

Why one: torch's CPU kernels run on OpenMP, whose threads meet at a barrier after every operator.
A thread that loses its core to another process holds the others back at each barrier, so on a
busy machine more threads run slower, not faster. Measured on a 2-core VM (docs/benchmarks.md):
beside two CPU-bound processes, 2 threads trained MNIST-1D's student 3.7x and its teacher 2.5x
slower than 1 thread; and even on the quiet machine, 2 threads in a sweep's worker thread took 4x
as long per epoch as 1 (two OpenMP teams, the main thread's and the worker's, share the cores).
On the quiet machine 1 thread costs the students nothing and the teacher 20 %. Ray Tune and
torchrun make the same choice (one thread per trial or process unless told). A large model on a
quiet many-core machine gains from more: ``--threads N``, as long as jobs x N fits the cores.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from kdcore.errors import ConfigError

DEFAULT_THREADS = 1
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's CPU set), and
    a cgroup's CPU quota where one is set (a container limited to 1.5 CPUs gets 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota is not None else cores)


def _cgroup_quota() -> int | None:
    """Whole CPUs of the cgroup v2 quota (``cpu.max``: "max 100000" when there is none)."""
    try:
        limit, period = _CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(1, math.floor(int(limit) / int(period)))


def plan_threads(jobs: int, threads: int | None = None, cores: int | None = None) -> tuple[int, int, str | None]:
    """(jobs, threads per job, a note or None) for a command that trains in ``jobs`` processes.

    More jobs than usable cores are cut to the cores, with a note saying so: each job needs a core
    of its own. ``threads`` (``--threads``) is refused with a ConfigError when jobs x threads would
    exceed the cores; None gives DEFAULT_THREADS.
    """
    cores = usable_cores() if cores is None else cores
    note = None
    if jobs > cores:
        note = (f"--jobs {jobs}: kdsweep may use {cores} core(s) here, so it runs {cores} worker(s); more would "
                "share cores and make every trial slower")
        jobs = cores
    if threads is None:
        return jobs, DEFAULT_THREADS, note
    most = max(1, cores // jobs)
    if threads < 1:
        raise ConfigError(f"--threads {threads} is not allowed: use 1 to {most}")
    if jobs * threads > cores:
        raise ConfigError(f"--threads {threads} is not allowed with {jobs} job(s): jobs x threads must be at most the "
                          f"{cores} core(s) kdsweep may use here; use 1 to {most}")
    return jobs, threads, note


def use_threads(threads: int) -> None:
    """Set torch's intra-op threads for this process (every thread that trains in it)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
