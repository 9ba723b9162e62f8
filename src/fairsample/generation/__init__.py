"""Generation: the sampling pipeline (plan, in-memory sampling, resumable folder writer) and augmentation plans."""
