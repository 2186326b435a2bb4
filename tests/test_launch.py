"""launch/run.sh and launch/slurm.sbatch: the exact commands they run (dry runs and a stub launcher),
in a copy of the scripts so that no test writes into the repo. The real 2-node job is in
test_distributed.py."""

import os
import shutil
import subprocess

import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration  # every test runs the launch scripts


@pytest.fixture
def repo(tmp_path):
    """The launch scripts with a stage module to find, and a stub `deepspeed` that prints its arguments."""
    shutil.copytree(ROOT / "launch", tmp_path / "launch")
    (tmp_path / "pipeline").mkdir()
    for stage in ("train", "grow"):
        (tmp_path / "pipeline" / f"{stage}.py").write_text("")
    stub = tmp_path / "deepspeed-stub"
    stub.write_text('#!/usr/bin/env bash\necho "deepspeed $*"\n')
    stub.chmod(0o755)
    return tmp_path


LAUNCH_ENV = ("HOSTFILE", "MASTER_ADDR", "NODE_RANK", "NUM_GPUS", "NUM_NODES", "DRY_RUN", "MASTER_PORT", "FORWARD_ENV",
              # what run.sh forwards by default: only what a test sets
              "DS_ACCELERATOR", "OMP_NUM_THREADS", "HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM",
              "CUDA_DEVICE_MAX_CONNECTIONS")


def launch(repo, args, **env):
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    return subprocess.run(["bash", str(repo / "launch" / "run.sh"), *args], capture_output=True, text=True,
                          env={**clean, "DEEPSPEED": str(repo / "deepspeed-stub"), **env}, timeout=60)


def test_local_launch_runs_the_stage_module(repo):
    proc = launch(repo, ["train", "--config", "tiny", "run.dir=runs/x"], NUM_GPUS="2", MASTER_PORT="29555")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "deepspeed --master_port 29555 --num_gpus 2 --module pipeline.train --config tiny run.dir=runs/x\n"


def test_hostfile_launch_over_ssh_writes_the_forwarded_environment(repo):
    (repo / "hosts").write_text("node1 slots=8\nnode2 slots=8\n")
    (repo / ".deepspeed_env").write_text("NCCL_IB_HCA=mlx5\nOMP_NUM_THREADS=99\n")  # the user's own lines
    proc = launch(repo, ["train", "--config", "big"], HOSTFILE="hosts", MASTER_ADDR="10.0.0.1",
                  DS_ACCELERATOR="cuda", OMP_NUM_THREADS="4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("deepspeed --master_port 29500 --hostfile hosts --master_addr 10.0.0.1 "
                           "--module pipeline.train --config big\n")
    lines = (repo / ".deepspeed_env").read_text().splitlines()
    assert lines[0] == "NCCL_IB_HCA=mlx5" and "DS_ACCELERATOR=cuda" in lines  # kept, and added
    assert [line for line in lines if line.startswith("OMP_NUM_THREADS=")] == ["OMP_NUM_THREADS=4"]  # updated


def test_one_command_per_node_without_ssh(repo):
    (repo / "hosts").write_text("node1 slots=8\nnode2 slots=8\n")
    proc = launch(repo, ["train", "--config", "big"], HOSTFILE="hosts", MASTER_ADDR="node1", NODE_RANK="1",
                  DS_ACCELERATOR="cuda")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("deepspeed --master_port 29500 --hostfile hosts --master_addr node1 --no_ssh "
                           "--node_rank 1 --module pipeline.train --config big\n")
    assert not (repo / ".deepspeed_env").exists()  # each node's own environment is used


def test_dry_run_prints_instead_of_writing_or_running(repo):
    (repo / "hosts").write_text("node1 slots=8\n")
    proc = launch(repo, ["train", "run.dir=my run"], HOSTFILE="hosts", MASTER_ADDR="node1", DRY_RUN="1",
                  DS_ACCELERATOR="cuda", DEEPSPEED="deepspeed")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "# .deepspeed_env", "DS_ACCELERATOR=cuda",
        r"deepspeed --master_port 29500 --hostfile hosts --master_addr node1 --module pipeline.train run.dir=my\ run "]
    assert not (repo / ".deepspeed_env").exists()


@pytest.mark.parametrize("args, env, message", [
    (["pretrain"], {}, "no stage 'pretrain'"),
    (["train"], {"NODE_RANK": "0"}, "NODE_RANK needs HOSTFILE"),
    (["train"], {"HOSTFILE": "hosts"}, "HOSTFILE=hosts does not exist"),
    (["train"], {"HOSTFILE": "hosts-ok"}, "set MASTER_ADDR"),
])
def test_bad_launches_are_refused_with_the_fix(repo, args, env, message):
    (repo / "hosts-ok").write_text("node1 slots=1\n")
    proc = launch(repo, args, **env)
    assert proc.returncode != 0 and message in proc.stderr and proc.stdout == ""


def test_slurm_job_starts_one_launcher_per_node_with_its_rank(repo):
    """Stub scontrol and srun: srun runs the task once per node with that node's SLURM_NODEID."""
    bin_dir = repo / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\nprintf "gpu-a17\\ngpu-b03\\n"\n')
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\n'
                                  'for n in 0 1; do SLURM_NODEID=$n "$@"; done\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_SUBMIT_DIR=str(repo), SLURM_JOB_ID="42",
               SLURM_JOB_NODELIST="gpu-[a17,b03]", SLURM_GPUS_ON_NODE="4", DEEPSPEED=str(repo / "deepspeed-stub"))
    proc = subprocess.run(["bash", str(repo / "launch" / "slurm.sbatch"), "grow", "--config", "big"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (repo / "runs" / "slurm-42.hosts").read_text() == "gpu-a17 slots=4\ngpu-b03 slots=4\n"
    assert proc.stdout.splitlines() == [
        f"deepspeed --master_port 29500 --hostfile runs/slurm-42.hosts --master_addr gpu-a17 --no_ssh --node_rank {n} "
        f"--module pipeline.grow --config big" for n in (0, 1)]


def test_installed_versions_are_the_locked_ones():
    """launch/setup.sh installs launch/constraints.txt: what the tests run with is what the lock says
    (torch aside: GPU machines choose their build with TORCH_SPEC), and every locked package is installed
    (a lock written from an environment with extra packages would not be what setup.sh gives)."""
    from importlib.metadata import PackageNotFoundError, version
    locked = [line.split("==") for line in (ROOT / "launch" / "constraints.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    assert {name.lower() for name, _ in locked} >= {"torch", "deepspeed", "transformers", "datasets"}
    mismatched = []
    for name, want in locked:
        if name == "torch":
            continue
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "not installed"
        if have != want:
            mismatched.append(f"{name} {have} (locked {want})")
    assert not mismatched, f"installed versions differ from launch/constraints.txt: {mismatched}"
