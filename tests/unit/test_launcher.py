"""Launcher detection: deepspeed/torchrun, srun and mpirun variables become one consistent world."""

import pytest

from bigtrain.entry.launcher import Launch, LaunchError, detect, expand_hostlist, export

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
SRUN = {
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
}
MPIRUN = {
    "OMPI_COMM_WORLD_RANK": "2",
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_LOCAL_RANK": "0",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    "MASTER_ADDR": "node1",
}


def test_hostlists_expand_like_scontrol():
    assert expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_hostlist("n[8-10]") == ["n8", "n9", "n10"]
    assert expand_hostlist("localhost") == ["localhost"]


@pytest.mark.parametrize(
    "env,want",
    [
        ({}, Launch("python", 0, 1, 0, "127.0.0.1", 0)),
        (TORCHRUN, Launch("deepspeed/torchrun", 1, 4, 1, "10.0.0.1", 29500)),
        (SRUN, Launch("srun", 3, 4, 1, "gpu07", 20000 + 4242)),
        ({**SRUN, "MASTER_PORT": "31000", "MASTER_ADDR": "head"}, Launch("srun", 3, 4, 1, "head", 31000)),
        (MPIRUN, Launch("mpirun", 2, 4, 0, "node1", 29500)),
        # torchrun started by srun, one per node: the launcher's variables win
        ({**SRUN, **TORCHRUN, "SLURM_STEP_NUM_TASKS": "2"}, Launch("deepspeed/torchrun", 1, 4, 1, "10.0.0.1", 29500)),
        # python inside an sbatch script, outside any srun step: one process
        ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, Launch("python", 0, 1, 0, "127.0.0.1", 0)),
    ],
)
def test_each_launcher_is_read(env, want):
    assert detect(env) == want


def test_mpirun_replaces_a_local_rank_inherited_from_the_shell():
    env = {**MPIRUN, "OMPI_COMM_WORLD_LOCAL_RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    export(detect(env), env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("2", "4", "1", "node1")


def test_srun_becomes_torch_distributed_variables():
    env = dict(SRUN)
    export(detect(env), env)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": "24242",
    }


@pytest.mark.parametrize(
    "env,message",
    [
        ({"RANK": "0"}, r"RANK is set but WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not"),
        ({**TORCHRUN, "RANK": "4"}, r"rank 4 in a world of 4"),
        ({**TORCHRUN, "WORLD_SIZE": "two"}, r"WORLD_SIZE='two' is not an integer"),
        # srun -n 4 torchrun --nproc_per_node 1 (no --nnodes): four worlds of one
        ({**SRUN, **TORCHRUN, "WORLD_SIZE": "1", "RANK": "0"}, r"srun started 4 tasks, but each one's .* WORLD_SIZE=1"),
        ({**MPIRUN, "MASTER_ADDR": ""}, r"mpirun across hosts .* -x MASTER_ADDR"),
        ({**SRUN, "SLURM_STEP_NODELIST": "", "SLURM_JOB_NODELIST": ""}, r"export MASTER_ADDR"),
    ],
)
def test_inconsistent_launches_are_one_line_errors(env, message):
    with pytest.raises(LaunchError, match=message) as err:
        detect(env)
    assert "\n" not in str(err.value)
