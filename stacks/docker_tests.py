"""A service's GPU test job on a Docker host (`services.<name>.test`), run before its container is replaced.

The job is a one-shot GpuContainer (`<name>-test`, container `<stack>-<name>-test`): the freshly built
image, or the image of the test's own stage (`target`) or Dockerfile (`dockerfile`) of the service's
source, built with the release (one more recipe in the release tag, `<tag>-<stage>` or
`<repository>-<name>-test:<tag>`), runs the command under `timeout -k 10 <timeout>` with the service's
GPU (the same placed devices), env, secretEnv, user, memory and shm, and its volumes read-only (it may read
a model cache, never change the running service's data). Its exit code gates the service: the service's
container and its GPU memory gate (which, stop-first, stops the old copy) depend on the job and check
its exit code (GpuContainerArgs.must_succeed), so a failing test fails `pulumi up` before the running copy
is touched. The job's own gate (zero-downtime mode: it stops nothing) confirms on the host that its budget
is free beside the running copy; the plan counts that budget on the service's devices
(GpuDemand.test_mib in components/core/gpu_memory.py).

It runs again whenever one of its inputs changes: a new image (a new release, and a rollback to a pinned
tag too: unlike a migration a test changes nothing, and the kept image meets this host's driver as it is
now, not as it was when that release was built), its command, the service's env or GPU.
"""

from __future__ import annotations

import dataclasses

import pulumi

from components.core.vocabulary import LABEL_SERVICE
from components.docker.container import NO_GPU_DEVICES, GpuContainer, GpuContainerArgs, Mount
from components.docker.image import CudaImage
from stacks.config import ImageConfig, Service, StackConfig
from stacks.config.builds import ImageBuild, build_source, team_args

KILL_AFTER_S = 10  # `timeout -k`: SIGKILL this long after the SIGTERM at the timeout


def test_name(service: str) -> str:
    """The job's resource name, and the key of its image among the stack's images."""
    return f"{service}-test"


def test_source(svc: Service, image: ImageConfig) -> tuple[str, str, str | None] | None:
    """(context, Dockerfile, stage) of the test's own image; None: it runs the service's image."""
    test = svc.test
    if test is None or (test.target is None and test.dockerfile is None):
        return None
    context, dockerfile, _ = build_source(svc, image)
    return (context, test.dockerfile or dockerfile, test.target)


def with_test_builds(config: StackConfig, names: list[str], builds: list[ImageBuild]) -> list[ImageBuild]:
    """`builds` and the test images of the services `names`: a test source one of them builds already joins
    it (its services gain `<name>-test`), another is one more build, with the service's GPU and args."""
    image = config.image
    merged = {build.source: build for build in builds}
    if image is None:
        return builds
    for name in names:
        svc = config.services[name]
        source = test_source(svc, image) if svc.enabled and svc.image == "build" else None
        if source is None:
            continue
        if source in merged:
            found = merged[source]
            merged[source] = dataclasses.replace(found, services=(*found.services, test_name(name)))
            continue
        args, keys = team_args(name, svc, image)
        merged[source] = ImageBuild(
            *source, services=(test_name(name),), uses_gpu=svc.gpu.wants_gpu, args=args, arg_keys=keys
        )
    return list(merged.values())


def test_job(
    name: str,
    svc: Service,
    service_args: GpuContainerArgs,
    images: dict[str, CudaImage],
    opts: pulumi.ResourceOptions,
) -> GpuContainer | None:
    """The service's test job (None without one), from the arguments of the service's own container."""
    test = svc.test
    if test is None:
        return None
    job = test_name(name)
    command = ["timeout", "-k", str(KILL_AFTER_S), str(test.timeout), *test.command_list]
    gate = service_args.gate
    args = dataclasses.replace(
        service_args,
        container_name=f"{service_args.container_name}-test",
        image=images[job].ref if job in images else service_args.image,
        service=job,
        command=command,
        ports=(),
        mounts=[Mount(m.source, m.target, read_only=True) for m in service_args.mounts],
        healthcheck=None,
        restart="no",
        one_shot=True,
        keep_image=False,
        labels={**service_args.labels, LABEL_SERVICE: job},
        zero_downtime=True,  # its gate only confirms the room beside the running copy: it stops nothing
        # a GPU service's job checks its own budget; without a GPU there is no room to check
        gate=dataclasses.replace(gate, need_mib=test.gpu_memory or svc.gpu_memory)
        if gate is not None and gate.devices != NO_GPU_DEVICES
        else None,
    )
    return GpuContainer(job, args, opts=opts)


def gated_on_test(args: GpuContainerArgs, job: GpuContainer | None) -> GpuContainerArgs:
    """The service's container arguments, its start (and its gate) waiting for the job's exit code 0."""
    if job is None:
        return args
    return dataclasses.replace(args, must_succeed=[*args.must_succeed, job.exit_code])
