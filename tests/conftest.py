import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test never reaches the network (test_hub opts back in)
DEEPSPEED = Path(sys.executable).parent / "deepspeed"


def pytest_collection_modifyitems(items):
    """Test tiers: `integration` = prepares data, launches ranks or starts any process; the rest is
    the unit tier (`pytest -m "not integration"`), which `no_processes_in_unit_tests` holds to that."""
    for item in items:
        if "prepared" in item.fixturenames or item.get_closest_marker("distributed"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def no_processes_in_unit_tests(request, monkeypatch):
    if request.node.get_closest_marker("integration") is None:
        def refuse(*args, **kwargs):
            raise AssertionError("a unit test started a process: mark it pytest.mark.integration")
        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_overrides(data_root: Path) -> list[str]:
    """Overrides that point a recipe at the test session's prepared data (never the repo's dirs)."""
    return [f"data.tokenizer={data_root}/tokenizer", f"data.output_dir={data_root}/packed"]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """The tiny recipe's data (stdlib corpus, 2k vocab, seq_len 128), prepared once per session."""
    from pipeline.prepare import prepare
    root = tmp_path_factory.mktemp("prepared")
    config = load_config("tiny", data_overrides(root))
    meta = prepare(config)
    return root, config, meta


def start_deepspeed(module_args: list[str], env: dict | None = None, output=subprocess.PIPE,
                    ranks: int = 2) -> subprocess.Popen:
    """`ranks` (2) CPU ranks through the real `deepspeed` launcher, as users run it, in a new process group
    (os.killpg takes down the launcher and its workers). `output`: PIPE, or a file for a process
    nobody reads from while it runs."""
    port = free_port()
    cmd = [str(DEEPSPEED), "--num_gpus", str(ranks), "--master_port", str(port), *module_args]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=output,
                            stderr=subprocess.STDOUT if output is not subprocess.PIPE else subprocess.PIPE, text=True,
                            start_new_session=True)
    proc.port = port
    return proc


def run_deepspeed(module_args: list[str], timeout: int = 600, expect_ok: bool = True,
                  env: dict | None = None, ranks: int = 2) -> subprocess.CompletedProcess:
    launched = start_deepspeed(module_args, env, ranks=ranks)
    stdout, stderr = launched.communicate(timeout=timeout)
    proc = subprocess.CompletedProcess(launched.args, launched.returncode, stdout, stderr)
    cmd, port = launched.args, launched.port
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    # DeepSpeed's CPU shared-memory segments must not outlive the run (pipeline.engine removes them)
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    return proc
