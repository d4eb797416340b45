"""config/examples/gige-fake.toml and scripts/gige-fake-demo.sh: the GigE Vision path without a camera."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from .conftest import REPO, run_cli
from .gige import skip_unless_gige_possible

EXAMPLE = REPO / "config" / "examples" / "gige-fake.toml"


def namespaces() -> set[str]:
    return {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                                       timeout=10).stdout.splitlines() if line.strip()}


def test_example_config_is_valid() -> None:
    """check-config accepts it: an aravis camera at 127.0.0.1 on the bundled demo model, ipc:// publisher."""
    run = run_cli("check-config", str(EXAMPLE))
    assert run.returncode == 0, run.stderr
    assert "camera gige1: aravis -> model demo" in run.stdout
    assert "publisher ipc:///tmp/inspector-gige-fake.ipc" in run.stdout


def test_demo_script_runs_the_example_in_a_namespace_and_cleans_up(tmp_path: Path) -> None:
    """The script starts the fake camera and the daemon in a namespace holding only `lo`, `inspector listen`
    outside prints the daemon's verdicts (frame ids as part ids), and on exit the namespace is gone."""
    skip_unless_gige_possible()
    before = namespaces()
    run = subprocess.run(["bash", str(REPO / "scripts" / "gige-fake-demo.sh")], capture_output=True, text=True,
                         timeout=120, cwd=REPO, env={**os.environ, "GIGE_SECONDS": "10"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    verdicts = re.findall(r"^(?:ACCEPT|REJECT) gige1 seq=(\d+) part=(\d+) ", run.stdout, re.M)
    assert len(verdicts) >= 10, run.stdout[-3000:]
    assert [int(seq) for seq, _ in verdicts] == list(range(len(verdicts)))
    assert all(int(part) > 0 for _, part in verdicts)
    assert namespaces() == before, "the script deletes its namespace"
