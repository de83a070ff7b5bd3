"""What follows a sweep: seed 002's pruning and quantization-aware KD (``compress``) and seed 004's
federated stage (``federate``), each on a trial's distilled student, each step an MLflow run."""
