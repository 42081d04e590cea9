"""Risk: joint risk control — alerts for the desk, tasks for grid workers."""
