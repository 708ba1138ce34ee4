#!/bin/bash -l
#PBS -l select=1:ncpus=8:ngpus=1:mem=64GB
#PBS -l walltime=12:00:00
#PBS -A NAML0001
#PBS -q casper
#PBS -N torch_example
#PBS -o <SEARCH>/results/out
#PBS -e <SEARCH>/results/err
# hyper_opt: study '<STUDY>', job 0 of 1 job(s)

# PBS starts a job in $HOME: run where the search was started, as local workers and
# Slurm jobs do (the objective's relative paths and imports mean the same everywhere)
export HYPER_OPT_CWD=<SEARCH>
cd "$HYPER_OPT_CWD"

# setup (pbs:bash, then pbs:kernel), then the python they set up
source ~/.bashrc
conda activate echo
HYPER_OPT_PYTHON="$(command -v python || command -v python3)"
if [ -z "$HYPER_OPT_PYTHON" ] || ! "$HYPER_OPT_PYTHON" -c "import hyper_opt, submitit" >/dev/null 2>&1; then
  printf '%s\n' "hyper_opt: the python set up by the bash/kernel lines (${HYPER_OPT_PYTHON:-none on PATH}) cannot import hyper_opt and submitit; running "<PYTHON>" instead (install hyper_opt in that environment, or set python: in this section)" >&2
  HYPER_OPT_PYTHON=<PYTHON>
fi

# the workers: gpus_per_node x tasks_per_worker, one GPU each (hyper_opt.launch.job)
exec "$HYPER_OPT_PYTHON" -m hyper_opt.launch.job <SEARCH>/hyper.yml <SEARCH>/model.yml --job-index 0 --gpus-per-node 1 --tasks-per-worker 1 --stop-margin 60 --walltime 43200
