"""Helpers for tests and smoke runs: tiny weights in the real layout."""
