#!/usr/bin/env bash
# Debian's Slurm and munge, and Open MPI's mpirun, for the cluster launcher tests
# (tests/e2e/test_slurm.py). Needs root and apt; without them it says so and those tests skip.
# Idempotent: nothing happens when installed.
set -uo pipefail
if command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v mpirun >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "tests/slurm_install.sh: not root or no apt-get: the Slurm and mpirun tests will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge openmpi-bin >/dev/null \
  || echo "tests/slurm_install.sh: apt-get install slurm-wlm munge openmpi-bin failed: those tests will skip" >&2
