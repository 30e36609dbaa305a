"""Two hosts on one machine: two network namespaces joined by a veth pair act as two nodes, one
rank each, and train one run over gloo with the README's torchrun multi-node command. Its losses
equal the same 2-rank run on one host."""

import os
import shutil
import subprocess

import pytest

from tests.helpers.launch import PYTHON, ROOT, launch, read_metrics

pytestmark = pytest.mark.e2e

ADDR = {0: "10.77.0.1", 1: "10.77.0.2"}
ARGS = [
    "model=tiny",
    "model.n_layers=2",
    "model.seq_len=64",
    "data=shakespeare_char",
    "trainer.max_steps=6",
    "trainer.micro_batch_size=4",
    "trainer.global_batch_size=16",
    "trainer.eval_interval=3",
    "trainer.eval_iters=1",
    "trainer.sample_tokens=0",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts():
    """Namespaces bt<pid>n0 and bt<pid>n1 with a veth pair between them: (namespace, device) per node."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    tag = f"bt{os.getpid() % 100000}"
    nodes = {n: (f"{tag}n{n}", f"{tag}v{n}") for n in ADDR}
    made = []
    try:
        for ns, _ in nodes.values():
            if ip("netns", "add", ns).returncode != 0:
                pytest.skip(f"cannot create network namespace {ns}: {ip('netns', 'add', ns).stderr.strip()}")
            made.append(ns)
        assert ip("link", "add", nodes[0][1], "type", "veth", "peer", "name", nodes[1][1]).returncode == 0
        for n, (ns, dev) in nodes.items():
            for cmd in (
                ("link", "set", dev, "netns", ns),
                ("-n", ns, "addr", "add", f"{ADDR[n]}/24", "dev", dev),
                ("-n", ns, "link", "set", dev, "up"),
                ("-n", ns, "link", "set", "lo", "up"),
            ):
                result = ip(*cmd)
                assert result.returncode == 0, f"ip {' '.join(cmd)}: {result.stderr}"
        yield nodes
    finally:
        for ns in made:
            ip("netns", "del", ns)


def test_two_nodes_train_one_run_like_one_host(two_hosts, corpus, cache_dir, tmp_path):
    procs = []
    for node, (ns, dev) in two_hosts.items():
        # README: torchrun --nnodes 2 --node-rank N --master-addr node1 --master-port 29500 ...;
        # GLOO_SOCKET_IFNAME because both namespaces share one hostname.
        command = ["ip", "netns", "exec", ns, "env", f"GLOO_SOCKET_IFNAME={dev}", PYTHON, "-m", "torch.distributed.run"]
        command += ["--nnodes", "2", "--node-rank", str(node), "--master-addr", ADDR[0], "--master-port", "29400"]
        command += ["--nproc-per-node", "1", "launch/pretrain.py", f"run.root={tmp_path}", "run.name=two-hosts"]
        command += [f"data.path={corpus}", *ARGS]
        out = open(tmp_path / f"node{node}.log", "w")
        procs.append((subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT), out))
    for proc, out in procs:
        try:
            proc.wait(timeout=600)
        finally:
            proc.kill()
            out.close()
    logs = [(tmp_path / f"node{n}.log").read_text() for n in two_hosts]
    assert [p.returncode for p, _ in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert "layout: world 2 = tensor 1 × pipeline 1 × data 2" in logs[0]
    two = read_metrics(tmp_path / "two-hosts")
    assert [r["step"] for r in two] == list(range(1, 7))

    one = launch(
        [PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", "2", "launch/pretrain.py"]
        + [f"run.root={tmp_path}", "run.name=one-host", f"data.path={corpus}", *ARGS],
        ROOT,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    same = read_metrics(tmp_path / "one-host")
    for key in ("loss", "grad_norm", "val_loss"):
        # by step: val_loss is on the evaluation steps only (pytest.approx takes no None from 9.2 on)
        theirs, ours = ({r["step"]: r[key] for r in rows if key in r} for rows in (two, same))
        assert theirs.keys() == ours.keys() and theirs, key
        assert list(theirs.values()) == pytest.approx(list(ours.values()), rel=1e-6), key
