"""Leaf utilities of a run: processes and hosts, stop signals, metric files."""
