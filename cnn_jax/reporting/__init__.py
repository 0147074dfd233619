"""Figures of a run and of a sweep (matplotlib, Agg backend)."""
