"""Workload generator and benchmark harness (``edgeskip bench``)."""
