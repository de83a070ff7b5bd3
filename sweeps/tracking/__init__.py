"""Where results live: the store folder, the Optuna storage URL, MLflow run logging, and one logged
distillation run (what `kdsweep train` does once and a sweep does per trial)."""
