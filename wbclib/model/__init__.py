"""Stage 2, model: the multi-task network (Fig. 4 of the reference report) and its losses (Eq. 1 and 2)."""
