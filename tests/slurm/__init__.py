"""Tests against a real single-host Slurm cluster (see cluster.py)."""
