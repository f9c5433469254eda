"""End-to-end tests: the CLI or the API from a generated dataset through planning, training and prediction (all marked slow)."""
