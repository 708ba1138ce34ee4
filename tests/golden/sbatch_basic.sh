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
HYPER_OPT_PYTHON="$(command -v python || command -v python3)"
if [ -z "$HYPER_OPT_PYTHON" ] || ! "$HYPER_OPT_PYTHON" -c "import hyper_opt, submitit" >/dev/null 2>&1; then
  printf '%s\n' "hyper_opt: the python set up by the bash/kernel lines (${HYPER_OPT_PYTHON:-none on PATH}) cannot import hyper_opt and submitit; running "<PYTHON>" instead (install hyper_opt in that environment, or set python: in this section)" >&2
  HYPER_OPT_PYTHON=<PYTHON>
fi

# command
export SUBMITIT_EXECUTOR=slurm
exec "$HYPER_OPT_PYTHON" -u -m submitit.core._submit <SEARCH>/results/slurm
