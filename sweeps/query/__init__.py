"""Reading studies back: trials as pandas frames, best, Pareto front (chosen on validation), studies, the KD verdict, `--where`."""
