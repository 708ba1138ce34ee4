#!/bin/bash -l
#PBS -l select=2:ncpus=64:ngpus=4:mem=480GB:gpu_type=a100+1:ncpus=8:mem=32GB,walltime=6:00:00
#PBS -A UCSU0001
#PBS -q main
#PBS -j oe
#PBS -r y
#PBS -m n
#PBS -V
#PBS -W depend=afterok:123.desched1
#PBS -o /glade/derecho/scratch/me/logs
#PBS -N hyper_opt-<STUDY>
#PBS -J 0-3
# hyper_opt: study '<STUDY>', array of 4 job(s)

# PBS starts a job in $HOME: run where the search was started, as local workers and
# Slurm jobs do (the objective's relative paths and imports mean the same everywhere)
export HYPER_OPT_CWD=<SEARCH>
cd "$HYPER_OPT_CWD"

# setup (pbs:bash, then pbs:kernel), then the python they set up
conda activate 'my env'
HYPER_OPT_PYTHON="$(command -v python || command -v python3)"
if [ -z "$HYPER_OPT_PYTHON" ] || ! "$HYPER_OPT_PYTHON" -c "import hyper_opt, submitit" >/dev/null 2>&1; then
  printf '%s\n' "hyper_opt: the python set up by the bash/kernel lines (${HYPER_OPT_PYTHON:-none on PATH}) cannot import hyper_opt and submitit; running "<PYTHON>" instead (install hyper_opt in that environment, or set python: in this section)" >&2
  HYPER_OPT_PYTHON=<PYTHON>
fi

# the workers: gpus_per_node x tasks_per_worker, one GPU each (hyper_opt.launch.job)
exec "$HYPER_OPT_PYTHON" -m hyper_opt.launch.job <SEARCH>/hyper.yml <SEARCH>/model.yml --job-index 0 --gpus-per-node 4 --tasks-per-worker 2 --stop-margin 60 --walltime 21600
