"""Stage 5, study: the grid of runs, executed locally or on Slurm, and the book built from it."""
