"""Helpers the tests share: fixtures live in conftest.py, the code they run lives here."""
