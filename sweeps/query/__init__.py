"""Reading studies back: trials as pandas frames, best, Pareto front, studies, comparisons, `--where`."""
