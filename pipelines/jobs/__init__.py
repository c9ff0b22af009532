"""The training, evaluation and deployment jobs and the driver they share."""
