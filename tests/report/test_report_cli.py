"""`auditor report RUN` re-renders a run from its tables without loading the training stack (torch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from report_fake_run import FakeRun

REPO_ROOT = Path(__file__).resolve().parents[2]
_PROBE = (
    "import sys\n"
    "from auditor.cli import main\n"
    "code = main(['report', sys.argv[1]])\n"
    "print('exit', code, 'torch' in sys.modules)\n"
)


def test_report_command_rewrites_the_report_without_importing_torch(fake_run: FakeRun) -> None:
    index = fake_run.store.path("index.html")
    assert not index.exists()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(fake_run.store.root)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "exit 0 False"
    assert index.is_file()
    assert fake_run.store.path("audit.json").is_file()
