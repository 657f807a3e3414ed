"""Offline judge (placeholder doc)."""
