"""prune-releases.sh run for real (bash, exactly the text `script(name)` sends) against a stub `docker`
that keeps images as lines of a state file (`repository tag id created`) and containers' images as
another; every call is logged, so a test sees which tags were removed."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.host.shell import command_line, script

DOCKER = r"""#!/usr/bin/env bash
set -u
echo "docker $*" >>"$CALLS_LOG"
case "$1 $2" in
  "ps -aq") cut -d' ' -f1 "$STATE/containers" ;;
  "container inspect") awk -v c="${!#}" '$1 == c {print $2}' "$STATE/containers" ;;
  "image ls") awk -v r="${!#}" '$1 == r {print $2}' "$STATE/images" ;;
  "image inspect")
    ref="${!#}"; awk -v r="${ref%:*}" -v t="${ref##*:}" '$1 == r && $2 == t {print $3, $4}' "$STATE/images" ;;
  "image rm")
    ref="${!#}"
    if grep -qxF "$ref" "$STATE/refuse" 2>/dev/null; then echo "Error: conflict" >&2; exit 1; fi
    awk -v r="${ref%:*}" -v t="${ref##*:}" '!($1 == r && $2 == t)' "$STATE/images" >"$STATE/images.new"
    mv "$STATE/images.new" "$STATE/images" ;;
  *) echo "unexpected docker $*" >&2; exit 2 ;;
esac
"""


@dataclass
class Host:
    state: Path
    env: dict[str, str]

    def run(self, **variables: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command_line(variables)],
            input=script("prune-releases"),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )

    def tags(self) -> list[str]:
        return [":".join(line.split()[:2]) for line in (self.state / "images").read_text().splitlines()]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    state, bindir = tmp_path / "state", tmp_path / "bin"
    state.mkdir()
    bindir.mkdir()
    (bindir / "docker").write_text(DOCKER)
    (bindir / "docker").chmod(0o755)
    # releases of two repositories, oldest first; a hand-made tag and another repository's image
    rows = []
    for day, release in enumerate(
        ["p40-000000000001", "p40-000000000002", "p40-000000000003", "p40-000000000004", "p40-000000000005"],
        start=1,
    ):
        created = f"2025-01-0{day}T10:00:00.000000000Z"
        rows += [
            f"app {release} sha256:a{day} {created}",
            f"app {release}-deps sha256:d{day} {created}",
            f"app-web {release} sha256:w{day} {created}",
        ]
    rows += [
        "app latest sha256:a5 2025-01-05T10:00:00Z",
        "other p40-000000000001 sha256:o1 2024-01-01T00:00:00Z",
    ]
    (state / "images").write_text("\n".join(rows) + "\n")
    (state / "containers").write_text("c1 sha256:a5\nc2 sha256:d1\n")  # d1: a stopped migration job
    (state / "calls.log").write_text("")
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "STATE": str(state), "CALLS_LOG": str(state / "calls.log")}
    return Host(state, env)


def test_keeps_the_newest_the_current_and_what_a_container_uses(host: Host) -> None:
    done = host.run(REPOSITORIES="app app-web", KEEP="2", RELEASE="p40-000000000002")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "prune-releases: kept 4 release(s): p40-000000000001 p40-000000000002 p40-000000000004 "
        "p40-000000000005; removed 3 image tag(s)"
    )
    # release 3 goes (all its images); 1 stays (a stopped container uses its -deps), 2 is current,
    # 4 and 5 are the newest two; `latest` and other repositories are never touched
    assert sorted(t for t in host.tags() if "000000000003" in t) == []
    assert "app:latest" in host.tags() and "other:p40-000000000001" in host.tags()
    assert "app:p40-000000000001" in host.tags() and "app-web:p40-000000000002" in host.tags()


def test_a_refused_removal_is_a_warning(host: Host) -> None:
    (host.state / "refuse").write_text("app:p40-000000000003\n")
    done = host.run(REPOSITORIES="app", KEEP="1", RELEASE="")
    assert done.returncode == 0
    assert "WARNING: could not remove app:p40-000000000003; left as it is" in done.stderr
    assert "removed 5 image tag(s)" in done.stdout  # releases 2, 3 (its -deps only) and 4


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"REPOSITORIES": "app", "KEEP": "0"}, "ERROR: KEEP must be a whole number >= 1, got '0'"),
        ({"REPOSITORIES": "", "KEEP": "3"}, "ERROR: REPOSITORIES is empty"),
        ({"REPOSITORIES": "App;rm", "KEEP": "3"}, "ERROR: not a repository name: 'App;rm'"),
        ({"REPOSITORIES": "app", "KEEP": "3", "RELEASE": "latest"}, "ERROR: RELEASE is not a release tag"),
    ],
)
def test_bad_parameters_exit_19(host: Host, variables: dict[str, str], message: str) -> None:
    done = host.run(**variables)
    assert done.returncode == 19
    assert message in done.stderr
    assert (host.state / "calls.log").read_text() == ""
