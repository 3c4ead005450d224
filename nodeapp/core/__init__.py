"""Cross-cutting foundations: settings, errors, logging, tracing. Imports nothing of orderflow."""
