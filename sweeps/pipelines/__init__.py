"""What follows a sweep: seed 004's federated stage (``federate``)."""
