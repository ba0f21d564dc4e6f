"""`make bench`: how long `python -m stacks plan` takes, for every shipped stack and for generated stacks,
and how long the stack-file reader takes to refuse an alias bomb.

Times the real command (a new interpreter each time, as a user or CI runs it), best of REPEAT runs.
Fails (exit 1) when a shipped stack takes 1.5 s or more, when the cost per service grows faster
than linearly between 100 and 500 services, or when refusing an alias bomb takes a second or more (in
this process, and in a fresh interpreter as the CLI does). The unit suite asserts no times: it checks
that the bomb is refused within 100 MB (tests/stacks/test_stackfile.py).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stacks.config import ConfigError  # noqa: E402 - after the path is set
from stacks.plan import list_stacks  # noqa: E402
from stacks.stackfile import read_stack  # noqa: E402

REPEAT = 3
SHIPPED_LIMIT_S = 1.5
SIZES = (10, 100, 500)
REPEAT_GENERATED = 1  # the 500-service plan takes seconds; one run each keeps `make bench` short
BOMB_LIMIT_S = 1.0
BOMBS = ((9, 9), (12, 10), (30, 30))  # (depth, width): 387 million strings and more, were they expanded


def time_plan(stack: str, config_file: Path | None = None, repeat: int = REPEAT) -> float:
    command = [sys.executable, "-m", "stacks", "plan", stack, "--json"]
    if config_file is not None:
        command += ["--config-file", str(config_file)]
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"plan {stack} failed: {result.stderr.strip()}")
        best = min(best, elapsed)
    return best


def generated_stack(services: int) -> dict[str, Any]:
    """A P40 host with `services` services: built GPU services and pinned sidecars, each with a port, a
    volume and a health check, all waiting for the first one to be healthy (the shape of a stack that
    shares a cache or a database). A dependsOn chain N deep is another matter: the Pulumi SDK's cycle
    breaker walks it for every resource, so it grows quadratically in a real `pulumi up` as well."""
    spec: dict[str, Any] = {}
    for index in range(services):
        name = f"svc-{index}"
        service: dict[str, Any] = {
            "image": "build" if index % 2 == 0 else "redis:7.2.4",
            "gpu": 1 if index % 2 == 0 else "none",
            "ports": [f"127.0.0.1:{20000 + index}:8000"],
            "volumes": [f"data/{name}:/data"],
            "user": "1001:1001",
            "memory": "1g",
            "env": {"SERVICE": name},
            "healthcheck": {"http": {"path": "/health", "port": 8000}},
        }
        if index:
            service["dependsOn"] = {"svc-0": "healthy"}
        spec[name] = service
    return {
        "config": {
            "gpu-deploy:profile": "p40",
            "gpu-deploy:target": {
                "kind": "docker",
                "host": "bench.gpu.internal",
                "user": "deploy",
                "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPBenchHostKeyPlaceholderReplaceMe0000000000",
                "root": "/srv/bench",
            },
            "gpu-deploy:image": {
                "repository": "bench",
                "context": "images",
                "dockerfile": "cuda-python/Dockerfile",
            },
            "gpu-deploy:services": spec,
        }
    }


def alias_bomb(depth: int, width: int) -> str:
    """A stack file whose one value is a billion-laughs list: `width` aliases of the level below, `depth`
    levels deep."""
    lines = ["config:", "  gpu-deploy:bomb:", "    l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [
        f"    l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]" for level in range(1, depth)
    ]
    return "\n".join(lines) + "\n"


def time_refusal(path: Path) -> float:
    start = time.perf_counter()
    try:
        read_stack(path)
    except ConfigError:
        return time.perf_counter() - start
    raise SystemExit(f"{path.name}: the alias bomb was read, not refused")


CLI_REFUSAL = """\
import sys, time
from pathlib import Path
from stacks.config import ConfigError
from stacks.stackfile import read_stack
start = time.perf_counter()
try:
    read_stack(Path(sys.argv[1]))
except ConfigError:
    print(time.perf_counter() - start)
"""


def time_refusal_in_a_fresh_interpreter(path: Path) -> float:
    result = subprocess.run(
        [sys.executable, "-c", CLI_REFUSAL, str(path)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    if not result.stdout.strip():
        raise SystemExit(f"{path.name}: the alias bomb was read, not refused")
    return float(result.stdout)


def bench_alias_bombs(folder: Path) -> list[str]:
    failures = []
    for depth, width in BOMBS:
        path = folder / f"bomb-{depth}x{width}.yaml"
        path.write_text(alias_bomb(depth, width))
        timings = {
            "in-process": time_refusal(path),
            "fresh interpreter": time_refusal_in_a_fresh_interpreter(path),
        }
        for where, seconds in timings.items():
            print(f"{f'bomb {depth}x{width}':<16}{where:>18}{seconds:>10.3f}")
            if seconds >= BOMB_LIMIT_S:
                failures.append(f"alias bomb {depth}x{width} ({where}): {seconds:.2f} s >= {BOMB_LIMIT_S} s")
    return failures


def main() -> int:
    failures: list[str] = []
    print(f"{'stack':<16}{'services':>9}{'seconds':>10}")
    for stack in list_stacks(ROOT):
        config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
        count = len(config.get("gpu-deploy:services", {}))
        seconds = time_plan(stack)
        print(f"{stack:<16}{count:>9}{seconds:>10.3f}")
        if seconds >= SHIPPED_LIMIT_S:
            failures.append(f"{stack}: {seconds:.2f} s >= {SHIPPED_LIMIT_S} s")

    timings: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in SIZES:
            path = Path(folder) / f"Pulumi.bench{size}.yaml"
            path.write_text(yaml.safe_dump(generated_stack(size)))
            timings[size] = time_plan(f"bench{size}", path, REPEAT_GENERATED)
            print(f"{'generated':<16}{size:>9}{timings[size]:>10.3f}")

    small, mid, large = SIZES
    per_service_mid = (timings[mid] - timings[small]) / (mid - small)
    per_service_large = (timings[large] - timings[mid]) / (large - mid)
    print(
        f"per service: {per_service_mid * 1000:.2f} ms ({small}->{mid}), {per_service_large * 1000:.2f} ms ({mid}->{large})"
    )
    # linear growth keeps the marginal cost flat; allow 2x for noise on a shared machine
    if per_service_large > 2 * max(per_service_mid, 0.001):
        failures.append(f"worse than linear: {per_service_large * 1000:.2f} ms/service beyond {mid}")
    with tempfile.TemporaryDirectory() as folder:
        failures += bench_alias_bombs(Path(folder))
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
