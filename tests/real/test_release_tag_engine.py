"""The release tag hashes exactly what Docker sends: the same context built by the real Docker CLI and
engine, its files listed from the image, against `components.docker.image.context_files`. Cases as in
tests/stacks/test_release_tag.py: `*` that stops at `/`, `**`, `!` exceptions, a leading `/`, `.git`.

`FROM scratch` + `COPY . /ctx/` puts every file the build context holds into the image, so the image's
file list is what the Docker CLI sent after applying .dockerignore (moby/patternmatcher). The legacy
builder (DOCKER_BUILDKIT=0) is used because this engine has no buildx; both apply the same patterns.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.real.engine import Engine
from tests.stacks.test_release_tag import CASES, FILES, make_context, sent_files


def files_docker_sent(engine: Engine, context: Path, tag: str) -> set[str]:
    built = subprocess.run(
        [engine.cli, "build", "-q", "-t", tag, str(context)],
        env={**engine.env(), "DOCKER_BUILDKIT": "0"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    created = engine.docker_cli("create", tag, "none").stdout.strip()
    try:
        exported = subprocess.run(
            [engine.cli, "export", created], env=engine.env(), capture_output=True, timeout=300, check=True
        ).stdout
    finally:
        engine.docker_cli("rm", created)
        engine.docker_cli("rmi", tag)
    with tarfile.open(fileobj=io.BytesIO(exported)) as archive:
        return {
            m.name.removeprefix("ctx/")
            for m in archive.getmembers()
            if m.isfile() and m.name.startswith("ctx/")
        }


@pytest.mark.parametrize("ignore", [ignore for ignore, _ in CASES])
def test_the_hashed_files_are_the_files_docker_sends(engine: Engine, tmp_path: Path, ignore: str) -> None:
    make_context(tmp_path, FILES, ignore)  # the unit tests' context: FROM scratch, COPY . /ctx/
    hashed = sent_files(tmp_path)
    in_image = files_docker_sent(engine, tmp_path, f"gpu-deploy-test/context:{abs(hash(ignore))}")
    # The CLI always sends the Dockerfile and .dockerignore (cli/command/image/build:
    # TrimBuildFilesFromExcludes); the daemon reads them and drops them again when a pattern excludes them
    # (builder/remotecontext/detect.go: removeDockerfile), so only there may the image lack a hashed file.
    always_sent = {"Dockerfile", ".dockerignore"}
    assert always_sent <= hashed
    assert hashed - always_sent == in_image - always_sent
