"""Running sessions as Slurm jobs."""
