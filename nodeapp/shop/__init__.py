"""The shop: catalog and stock, payments, notifications (ADR 0010)."""
