"""images/cuda-python/Dockerfile: lint-clean, parameterised exactly by GpuProfile.build_args().

No Docker engine is needed: the Dockerfile is linted with hadolint and parsed here.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components.core.catalog import CPU_BASE_IMAGE, PROFILES
from components.core.vocabulary import LABEL_PROFILE
from tests.tools import dev_tool

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = ROOT / "images"
DOCKERFILE = CONTEXT / "cuda-python" / "Dockerfile"
DOCKERIGNORE = CONTEXT / ".dockerignore"
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for key, rest in self.instructions if key == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuations joined, comment lines dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # Docker drops comment lines, also inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return result


def parse() -> tuple[list[tuple[str, str]], list[Stage]]:
    """The instructions before the first FROM, and the stages."""
    preamble: list[tuple[str, str]] = []
    stages: list[Stage] = []
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        else:
            preamble.append((keyword, rest))
    return preamble, stages


def arg_declarations(rest: str) -> list[tuple[str, str | None]]:
    """`ARG A=1 B` -> [("A", "1"), ("B", None)]."""
    declared: list[tuple[str, str | None]] = []
    for word in shlex.split(rest):
        name, eq, default = word.partition("=")
        declared.append((name, default if eq else None))
    return declared


def all_args() -> list[tuple[str, str | None]]:
    preamble, stages = parse()
    declared = [d for key, rest in preamble if key == "ARG" for d in arg_declarations(rest)]
    for stage in stages:
        declared += [d for rest in stage.all("ARG") for d in arg_declarations(rest)]
    return declared


def substitute(text: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"{text!r} uses ${name}, which is not a build arg"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def arg_values() -> list[dict[str, str]]:
    """The values a build may see: the Dockerfile defaults and every profile's build args."""
    defaults = {name: default for name, default in all_args() if default is not None}
    return [defaults, *(profile.build_args() for profile in PROFILES.values())]


# --- hadolint -----------------------------------------------------------------------------------


def hadolint() -> str:
    return dev_tool("hadolint")


def test_hadolint_reports_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_inline_hadolint_ignores_are_explained() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert line.strip() == "# hadolint ignore=DL3008", f"line {number + 1}: only DL3008 is waived"
            assert lines[number - 1].lstrip().startswith("#"), f"line {number + 1}: give the reason above"


# --- build args ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(PROFILES))
def test_args_are_exactly_the_profile_build_args(key: str) -> None:
    declared = {name for name, _ in all_args()}
    assert declared == set(PROFILES[key].build_args())


def test_arg_defaults_are_the_cpu_profile() -> None:
    cpu = PROFILES["cpu"].build_args()
    defaults: dict[str, set[str]] = {}
    for name, default in all_args():
        if default is not None:
            defaults.setdefault(name, set()).add(default)
    assert set(defaults) == set(cpu), "every build arg needs a default"
    for name, values in defaults.items():
        assert values == {cpu[name]}, f"ARG {name} defaults to {values}, the cpu profile has {cpu[name]!r}"
    assert defaults["BASE_IMAGE"] == {CPU_BASE_IMAGE}


def test_no_secret_in_args_or_env() -> None:
    _, stages = parse()
    names = [name for name, _ in all_args()]
    for stage in stages:
        for rest in stage.all("ENV"):
            names += [word.partition("=")[0] for word in shlex.split(rest)]
    assert not [name for name in names if SECRET_NAME.search(name)]


# --- stages, base images and user -----------------------------------------------------------------


def test_stages() -> None:
    _, stages = parse()
    names = [stage.name for stage in stages]
    assert "runtime" in names
    assert names[-1] == "gpu-probe", "gpu-probe must be the last stage (the default target)"
    assert len(set(names)) == len(names)


def test_base_images_are_pinned() -> None:
    _, stages = parse()
    seen: list[str | None] = []
    for stage in stages:
        if stage.base in seen:
            seen.append(stage.name)
            continue  # built on an earlier stage
        for values in arg_values():
            image = substitute(stage.base, values)
            repository, colon, tag = image.rpartition(":")
            assert colon and repository and "/" not in tag, f"{image}: no tag"
            assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{image}: not a pinned version tag"
        seen.append(stage.name)
    for stage in stages:
        for rest in stage.all("COPY"):
            source = re.search(r"--from=(\S+)", rest)
            if source:
                assert source.group(1) in seen, f"COPY --from={source.group(1)}: no such stage"


def test_runs_as_non_root_user() -> None:
    _, stages = parse()
    by_name = {stage.name: stage for stage in stages if stage.name}

    def effective_user(stage: Stage) -> str | None:
        users = stage.all("USER")
        if users:
            return users[-1]
        parent = by_name.get(stage.base)
        return effective_user(parent) if parent else None

    for name in ("runtime", "gpu-probe"):
        user = effective_user(by_name[name])
        assert user is not None, f"stage {name} has no USER"
        for values in [*arg_values(), PROFILES["p40"].build_args(app_uid=2000)]:
            resolved = substitute(user, values).partition(":")[0]
            assert resolved not in {"0", "root"}, f"stage {name} runs as {resolved}"
            assert resolved.isdigit(), "a numeric USER lets Kubernetes runAsNonRoot verify it"


def test_runtime_environment_and_labels() -> None:
    _, stages = parse()
    runtime = next(stage for stage in stages if stage.name == "runtime")
    env = " ".join(runtime.all("ENV"))
    for expected in (
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "PATH=/opt/venv/bin:$PATH",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}",
    ):
        assert expected in env
    labels = " ".join(runtime.all("LABEL"))
    for label in (
        f'{LABEL_PROFILE}="${{GPU_PROFILE}}"',  # the label the policy pack reads (one owner: vocabulary)
        'io.gpu-deploy.cuda-version="${CUDA_VERSION}"',
        'io.gpu-deploy.torch-index="${TORCH_INDEX_URL}"',
        "org.opencontainers.image.title=",
        'org.opencontainers.image.base.name="${BASE_IMAGE}"',
    ):
        assert label in labels
    assert "COPY --from=builder /opt/venv /opt/venv" in {f"COPY {rest}" for rest in runtime.all("COPY")}


def test_torch_comes_from_the_profile_index() -> None:
    _, stages = parse()
    runs = " ".join(rest for stage in stages for rest in stage.all("RUN"))
    install = re.search(r"pip install [^&]*torch==\$\{TORCH_VERSION\}[^&]*", runs)
    assert install, "torch must be pinned to ${TORCH_VERSION}"
    assert '--index-url "${TORCH_INDEX_URL}"' in install.group(0), "torch must come from ${TORCH_INDEX_URL}"
    assert "--extra-index-url" not in runs, "an extra index could hand a P40 a wheel without sm_61"
    assert "--no-cache-dir" in install.group(0)
    assert re.search(r"nvidia-ml-py==\d+\.\d+\.\d+", runs), "pin nvidia-ml-py"


def test_apt_usage() -> None:
    _, stages = parse()
    for stage in stages:
        for rest in stage.all("RUN"):
            if "apt-get install" in rest:
                assert "--no-install-recommends" in rest
                assert "rm -rf /var/lib/apt/lists/*" in rest
                assert "apt-get update" in rest


@pytest.mark.parametrize(
    ("python_version", "interpreter"),
    [("3.10", "python3.10"), ("3.12", "python3.12"), ("3.11", "python3.11"), ("3.11.11", "python3.11")],
)
def test_interpreter_name_from_python_version(python_version: str, interpreter: str) -> None:
    """The python:* images set ENV PYTHON_VERSION=3.11.11, which shadows the ARG: take major.minor."""
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no POSIX shell")
    _, stages = parse()
    runs = [rest for stage in stages for rest in stage.all("RUN") if "PYTHON_VERSION" in rest]
    assert len(runs) == 2, "the python-base and builder stages derive the interpreter name"
    for run in runs:
        snippet = re.match(r"(major=.*?py=\"[^\"]*\";)", run)
        assert snippet, run
        result = subprocess.run(
            [sh, "-c", snippet.group(1) + ' printf %s "$py"'],
            env={"PYTHON_VERSION": python_version},
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout == interpreter


def test_profiles_python_matches_the_base_os() -> None:
    """Ubuntu 22.04 ships 3.10 and 24.04 ships 3.12 (the image installs them from apt)."""
    shipped = {"22.04": "3.10", "24.04": "3.12"}
    for profile in PROFILES.values():
        if profile.is_gpu:
            assert profile.python_version == shipped[profile.ubuntu], profile.key


# --- the gpu-probe stage and the build context ------------------------------------------------------


def test_gpu_probe_stage() -> None:
    _, stages = parse()
    probe = stages[-1]
    assert probe.base == "runtime"
    assert probe.all("EXPOSE") == ["8080"]
    copies = probe.all("COPY")
    assert "gpu-probe/server.py /app/server.py" in copies
    (healthcheck,) = probe.all("HEALTHCHECK")
    assert "urllib" in healthcheck and "127.0.0.1:" in healthcheck and "/health" in healthcheck
    assert "8080" in healthcheck
    (cmd,) = probe.all("CMD")
    assert json.loads(cmd)[-1] == "/app/server.py"


def test_copy_sources_exist_and_are_in_the_context() -> None:
    _, stages = parse()
    allowed = {
        line[1:].strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.startswith("!") and line[1:].strip()
    }
    ignore_lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    assert "**" in ignore_lines, ".dockerignore should allow-list the build context"
    for stage in stages:
        for rest in stage.all("COPY"):
            if "--from=" in rest:
                continue
            *sources, _destination = [w for w in rest.split() if not w.startswith("--")]
            for source in sources:
                assert (CONTEXT / source).is_file(), f"COPY {source}: not in images/"
                assert source in allowed, f"COPY {source}: excluded by images/.dockerignore"


def test_the_deploy_reads_the_same_args_this_test_does() -> None:
    """stacks.docker_args.declared_args (what an image is sent) agrees with this file's Dockerfile parser."""
    from components.docker.image import BuildRecipe
    from stacks.docker_args import declared_args

    recipe = BuildRecipe(str(CONTEXT), str(DOCKERFILE.relative_to(CONTEXT)), "gpu-probe")
    assert declared_args(recipe) == frozenset(name for name, _ in all_args())
