"""Stage 4, results: what the run directories hold, turned into evaluations, tables and figures."""
