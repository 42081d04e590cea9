"""Gateway: the only door."""
