"""A hostile environment is reported before training starts, in one line with the fix (issue 12):
an unwritable run directory, a disk without room for one checkpoint, and a data cache on a full
disk. Small and read-only disks are tmpfs mounts (root only; the tests skip where mounting is not
allowed)."""

import subprocess

import pytest

from tests.helpers.launch import PYTHON, ROOT, launch

pytestmark = pytest.mark.e2e


@pytest.fixture
def mount(tmp_path):
    """mount(name, size, readonly) -> a tmpfs folder; unmounted afterwards."""
    mounted = []

    def make(name: str, size: str, readonly: bool = False):
        where = tmp_path / name
        where.mkdir()
        options = f"{'ro,' if readonly else ''}size={size}"
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def pretrain(*overrides, corpus=None):
    data = ["data=shakespeare_char", f"data.path={corpus}"] if corpus else []
    args = [PYTHON, "launch/pretrain.py", *data, "trainer.max_steps=2", "logging.progress_bar=false", *overrides]
    return launch(args, ROOT, timeout=300)


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("bigtrain: error: "), proc.stderr[-3000:]
    return lines[0]


def test_unwritable_run_directory(mount, tmp_path):
    readonly = mount("ro", "64k", readonly=True)
    line = one_line(pretrain(f"run.root={readonly}/runs"))
    assert f"run.root={readonly}/runs cannot hold the run: {readonly} is not writable" in line
    assert "pass run.root=<a writable folder>" in line
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = one_line(pretrain(f"hydra.run.dir={afile}/run"))
    assert f"{afile} is a file, not a folder: pass hydra.run.dir=<a writable folder>" in line


def test_disk_without_room_for_one_checkpoint(mount, corpus, cache_dir):
    small = mount("small", "1m")
    line = one_line(pretrain(f"run.root={small}", corpus=corpus))
    assert f"the disk holding {small}/" in line and "one checkpoint needs about 0.0774 GB" in line, line
    assert "point trainer.ckpt_dir (or run.root) at a larger disk" in line
    assert not list(small.rglob("metrics.jsonl")) and not list(small.rglob("step_*"))  # nothing trained


def test_data_cache_on_a_full_disk(mount, corpus, tmp_path):
    full = mount("full", "64k")
    proc = pretrain(f"run.root={tmp_path / 'runs'}", f"data.cache_dir={full}/cache", corpus=corpus)
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("bigtrain: error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert f"no space left on the disk holding the data cache {full}/cache/data" in lines[0]
    assert "set data.cache_dir (or BIGTRAIN_CACHE) to a larger disk" in lines[0]
    assert not [p for p in (full / "cache" / "data").iterdir()]  # no half-written cache left behind
