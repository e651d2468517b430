"""Benchmarks of ticketlock against real server processes on loopback.

Run from the repository root, for example ``python -m bench.handoff``; ``python -m
bench`` runs them all and prints a summary table. Every figure is printed beside a
baseline measured in the same run; nothing here asserts a speed.
"""
