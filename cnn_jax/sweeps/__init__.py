"""Sweeps on Optuna: what a sweep varies and its leaderboard."""
