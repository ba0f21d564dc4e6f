"""Golden files: generated text a reviewer should read whole, compared byte for byte (tests/golden/).

- render-a2/: every file `python -m stacks render a2 --out DIR` writes: the Kubernetes objects (the
  device plugin's ConfigMap among them) and helm/gpu-operator.values.yaml, the values the Helm release
  sends.
- host-scripts/: each host provisioning script as the prod stack sends it over SSH: the command line
  (with its environment) and the text on stdin (common.sh inlined).

A difference fails with a unified diff; tests/golden/README.md says how to update them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from components.host.shell import script, script_names
from stacks.plan import PROJECT_DIR
from tests.golden_files import Golden
from tests.plans import REMOTE_COMMAND, ShippedPlan

RENDERED = "a2"
SCRIPTS_FROM = "prod"  # a P40 Docker host: every host script runs there
# RUNNER_FILES' "SHA256  NAME" lines: pynvml.py's hash is the installed nvidia-ml-py's, so not golden
# (tests/stacks/test_smoke_stacks.py checks that what runs is what was copied)
RUNNER_HASH = re.compile(r"\b[0-9a-f]{64}(?=  [\w.-]+)")


def test_render_output(tmp_path: Path, golden: Golden) -> None:
    out = tmp_path / "render"
    result = subprocess.run(
        [sys.executable, "-m", "stacks", "render", RENDERED, "--out", str(out)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    files = {
        p.relative_to(out).as_posix(): p.read_text(encoding="utf-8") for p in out.rglob("*") if p.is_file()
    }
    assert "helm/gpu-operator.values.yaml" in files and "configmap-nvidia-device-plugin-config.yaml" in files
    golden.check_tree(f"render-{RENDERED}", files)


def test_host_scripts_as_sent_over_ssh(shipped_plan: ShippedPlan, golden: Golden) -> None:
    commands = shipped_plan(SCRIPTS_FROM).by_type(REMOTE_COMMAND)
    files: dict[str, str] = {}
    for name in script_names():
        text = script(name)
        sent = [
            c
            for c in commands
            if c.inputs.get("stdin") == text or shlex.quote(text) in str(c.inputs.get("create", ""))
        ]
        assert sent, f"the {SCRIPTS_FROM} stack does not run {name}.sh"
        first = sent[0]
        command_line = RUNNER_HASH.sub("<sha256>", first.inputs["create"])
        files[f"{name}.txt"] = (
            f"# {name}.sh as the {SCRIPTS_FROM} stack's {first.name} runs it over SSH (runner hashes masked)\n"
            f"# --- command line ---\n{command_line}\n"
            f"# --- stdin ---\n{first.inputs.get('stdin', '')}"
        )
    golden.check_tree("host-scripts", files)
