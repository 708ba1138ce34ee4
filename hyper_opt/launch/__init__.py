"""Launchers: local worker processes, and Slurm jobs through submitit."""
