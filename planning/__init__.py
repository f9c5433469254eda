"""Stage 1: what to train, decided from the data (fingerprint, compute budget, plans, checks)."""
