#!/bin/bash

# Parameters
#SBATCH --account=NAML0001
#SBATCH --constraint='a100&ib'
#SBATCH --error=<SEARCH>/hyper_opt.err
#SBATCH --exclusive
#SBATCH --gres=gpu:v100:2
#SBATCH --job-name=hyper_opt
#SBATCH --mem=128G
#SBATCH --nodes=1
#SBATCH --ntasks=8
#SBATCH --open-mode=append
#SBATCH --output=<SEARCH>/hyper_opt.out
#SBATCH --signal=B:USR2@120
#SBATCH --time=12:00:00
#SBATCH --wckey=submitit

# setup
module load cuda
conda activate 'my env'
echo kernel-line

# command
export SUBMITIT_EXECUTOR=slurm
exec <PYTHON> -u -m submitit.core._submit <SEARCH>/results/slurm
