"""`kdsweep run`: the Optuna search under a budget: plan, search space, samplers, trials, workers,
leases for crash safety."""
