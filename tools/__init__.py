"""Maintenance scripts run by hand (``python -m tools.<name>``); not part of the package."""
