"""Feature cache, training loop and run orchestration."""
