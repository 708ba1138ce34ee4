#!/bin/bash -l
#PBS -l select=1:ncpus=8:ngpus=1:mem=64GB
#PBS -l walltime=12:00:00
#PBS -A NAML0001
#PBS -q casper
#PBS -N torch_example
#PBS -o <SEARCH>/results/out
#PBS -e <SEARCH>/results/err
# hyper_opt: study '<STUDY>', job 0 of 1 job(s)

# PBS starts a job in $HOME: run where qsub ran (save_path), as the predecessors did
cd "$PBS_O_WORKDIR"

# setup (pbs:bash, then pbs:kernel)
source ~/.bashrc
conda activate echo

# the workers: gpus_per_node x tasks_per_worker, one GPU each (hyper_opt.launch.job)
exec <PYTHON> -m hyper_opt.launch.job <SEARCH>/hyper.yml <SEARCH>/model.yml --job-index 0 --gpus-per-node 1 --tasks-per-worker 1 --stop-margin 60 --walltime 43200
