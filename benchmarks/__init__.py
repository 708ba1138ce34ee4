"""hyper_opt's benchmarks: orchestration overhead against plain optuna and echo-opt, scaling with
the study size, time to first trial on Slurm, and the compute pruning saves.

``python -m benchmarks --quick`` (under 10 minutes on 2 cores) or ``--full``; figures go to
docs/benchmarks.md. See benchmarks/run.py.
"""
