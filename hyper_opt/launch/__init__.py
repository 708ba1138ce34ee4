"""Launchers: local worker processes, Slurm jobs through submitit, PBS jobs through qsub, and
the job entry both schedulers run on their nodes (job.py)."""
