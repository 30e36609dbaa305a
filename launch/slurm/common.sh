# Sourced by pretrain.sbatch and multinode.sbatch (from the submit directory, the checkout): the
# rendezvous from the allocation, Slurm's log in the run directory, one task per GPU or CPU slot,
# and a requeue after a checkpointed stop. Hydra overrides arrive as "$@".
set -uo pipefail
cd "$SLURM_SUBMIT_DIR"

# The run directory bigtrain will use: <run.root>/<run.name>, the job name unless overridden.
run_root=outputs
run_name=$SLURM_JOB_NAME
for arg in "$@"; do
  case $arg in
    run.root=*) run_root=${arg#run.root=} ;;
    run.name=*) run_name=${arg#run.name=} ;;
  esac
done
mkdir -p "$run_root/$run_name"
log="$run_root/$run_name/slurm-$SLURM_JOB_ID.out"
echo "bigtrain: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) logs to $log"
exec >>"$log" 2>&1
echo "bigtrain: job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST, $(date -Is)"

# Every task meets rank 0 on the first node; the port is fixed per job so a requeue reuses it.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

# One task per slot of the allocation (--ntasks-per-node: GPUs per node, or CPU ranks without
# GPUs); bigtrain reads SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID itself.
# A rank that dies takes the others down at once (--kill-on-bad-exit) instead of leaving them
# waiting in a collective.
stopped="$run_root/$run_name/stopped.json"
rm -f "$stopped"
# shellcheck disable=SC2086  # BIGTRAIN_CMD is a command line
srun --kill-on-bad-exit=1 ${BIGTRAIN_CMD:-python launch/pretrain.py} "$@"
status=$?
if [ "$status" -eq 75 ] || [ -f "$stopped" ]; then
  # --signal (time limit near, or preemption): bigtrain saved a checkpoint, wrote stopped.json
  # and exited 75 (srun may report the kill of a slower rank instead, hence the file).
  echo "bigtrain: checkpoint saved after a signal; requeueing job $SLURM_JOB_ID to resume"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$status"
