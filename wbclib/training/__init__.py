"""Stage 3, training: the loop, the forward pass, run directories and the metrics a run records."""
