"""The plain-Python core: requests, the one request pipeline, turns, options, budgets, checks, stats, memory readings.

Nothing here imports torch, transformers or ipywidgets at import time (tests/test_layers.py).
"""
