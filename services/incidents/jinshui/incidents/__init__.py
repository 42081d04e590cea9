"""Incidents: one incident stream from both platforms."""
