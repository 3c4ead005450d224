"""The order: its document, its pure transitions, its compare-and-set store, its intake."""
