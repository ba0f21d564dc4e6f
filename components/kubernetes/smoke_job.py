"""SmokeJob: a service's smoke checks, run inside the cluster once its pods are ready.

Creates, in order (children of the component, in `args.namespace`, which it does not create):
1. the immutable ConfigMap `<service>-smoke-<hash>` holding `smoke.py` and the modules it imports from
   beside itself (components/host SMOKE_FILES, byte for byte: the same standard-library runner the Docker
   path copies to the host) and `checks.json`;
2. the Job `<service>-smoke-<hash>`: `python3 /smoke/smoke.py --base-url http://<service>.<namespace>
   .svc.cluster.local:<port> --checks-file /smoke/checks.json --deadline D --interval 2` in the pinned
   CPU_BASE_IMAGE, the ConfigMap mounted read-only at /smoke. One pod, never restarted (`backoffLimit:
   0`, `restartPolicy: Never`): the runner does its own retrying while the model warms up, until the
   deadline; `activeDeadlineSeconds` = deadline + 60 s (image pull and start-up) bounds it. Non-root
   (uid 65534), no privilege escalation, all capabilities dropped, seccomp RuntimeDefault, a read-only
   root filesystem, no service-account token, a small memory limit (the policy pack wants one), no
   GPU (NVIDIA_VISIBLE_DEVICES=void, as GpuWorkload's CPU pods). Its labels are its own
   (`app.kubernetes.io/name: gpu-deploy-smoke`), so the service's Service never routes to it.

How it fails `pulumi up`: pulumi-kubernetes awaits a batch/v1 Job until its `Complete` condition and
fails the update as soon as the Job has a `Failed` condition (provider/pkg/await/job.go; the default
wait is 10 minutes, so `customTimeouts` here is the Job's own deadline + 60 s: the Job's failure, not
Pulumi's timeout, is what ends the wait). The provider reports the Job's pods' errors with it, including
a terminated container's message; `terminationMessagePolicy: FallbackToLogsOnError` makes that message
the tail of the runner's output, whose last line is `FAIL <check>: <the response it got, secret-looking
values masked> (exit N)`. Exit codes as on Docker: 2 timeout, 3 malformed response.

When it runs again: the objects' names carry a hash of everything that decides the outcome: the
runner's files, the checks, deadline and interval, the URL, the runner image and `revision` (what the
tested workload is: its image and spec, as the caller describes them). A change there is a new name,
so Pulumi replaces both objects and the new Job runs; nothing changed is the same name, so a
`pulumi up` with nothing to do stays a no-op (a Job's pod template is immutable, and
`replaceOnChanges` could not see a change that lives in another resource, the Deployment). The Job is
`deleteBeforeReplace`: a replacement that keeps the name (a change outside the hash, e.g. to this
file's resources) must delete the old Job before creating the new one. `pulumi.com/replaceUnready`
re-runs a Job that failed in an earlier update instead of waiting on it again. No
`ttlSecondsAfterFinished`: the finished Job stays as the record of the last run (its pod holds nothing).

Only `http` checks run here: `file` and `gpu` checks use `docker exec` into the service's container,
which a separate pod cannot do (stacks/config refuses them on kubernetes, naming the key).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.core.catalog import CPU_BASE_IMAGE
from components.core.vocabulary import recommended_labels
from components.core.workload_rules import in_cluster_smoke_problems
from components.host import SMOKE_FILES, SMOKE_RUNNER, smoke, smoke_checklist
from components.kubernetes.pod import restricted_container_security, restricted_pod_security
from components.options import child_options

MOUNT = "/smoke"
RUNNER_KEY = SMOKE_RUNNER.name
CHECKS_KEY = "checks.json"
RUN_AS = 65534  # nobody: the python image runs as root by default
START_UP_S = 60  # image pull and interpreter start, on top of the runner's own deadline
HASH_CHARS = 8
_MAX_SERVICE = 63 - len("-smoke-") - HASH_CHARS  # a Job name is a label value (job-name): 63 at most


@dataclass(frozen=True)
class SmokeJobArgs:
    service: str  # the service under test: names, labels
    namespace: str
    base_url: str  # e.g. http://kokoro.ai.svc.cluster.local:8880
    checks: Sequence[
        Mapping[str, Any]
    ]  # components/host/smoke.py checks, http only (whenGpu already applied)
    deadline_s: int = 180
    interval_s: int = 2
    image: str = CPU_BASE_IMAGE  # runs python3 (3.8+) from PATH
    revision: str = ""  # what the tested workload is; any change re-runs the checks

    @property
    def active_deadline_s(self) -> int:
        return self.deadline_s + START_UP_S

    @property
    def timeout_s(self) -> int:
        """How long Pulumi waits for the Job: longer than the Job may run, so its failure is reported."""
        return self.active_deadline_s + 60

    def checks_json(self) -> str:
        return json.dumps(list(self.checks), sort_keys=True, indent=2) + "\n"

    def command(self) -> list[str]:
        return [
            "python3",
            f"{MOUNT}/{RUNNER_KEY}",
            *smoke.command_arguments(
                self.base_url, f"{MOUNT}/{CHECKS_KEY}", self.deadline_s, self.interval_s
            ),
        ]

    def object_name(self, runner: Mapping[str, str]) -> str:
        """`<service>-smoke-<hash>`: a new name (a new run) whenever anything deciding the result changes."""
        material = json.dumps(
            [runner, self.checks_json(), self.command(), self.image, self.revision], sort_keys=True
        )
        digest = hashlib.sha256(material.encode("utf-8")).hexdigest()[:HASH_CHARS]
        return f"{self.service}-smoke-{digest}"


def check_args(args: SmokeJobArgs) -> None:
    """What cannot run in a pod beside the service is refused before any resource."""
    if not args.service or len(args.service) > _MAX_SERVICE:
        raise ValueError(f"{args.service!r}: a service name of 1 to {_MAX_SERVICE} characters")
    if not args.checks:
        raise ValueError(f"{args.service}: no smoke checks to run")
    try:
        smoke_checklist.parse_checks(list(args.checks))
    except smoke_checklist.ConfigError as err:
        raise ValueError(f"{args.service}: not a smoke check list: {err}") from None
    for problem in in_cluster_smoke_problems(list(args.checks)):
        raise ValueError(f"{args.service}: {problem.message}")
    if not args.base_url.startswith("http://") and not args.base_url.startswith("https://"):
        raise ValueError(f"{args.service}: base_url must be an http(s) URL, got {args.base_url!r}")
    if args.deadline_s < 1 or args.interval_s < 0:
        raise ValueError(f"{args.service}: deadline_s must be >= 1 and interval_s >= 0")


def smoke_labels(service: str) -> dict[str, str]:
    """Recommended labels, never the service's own name/instance pair (its Service selects on those)."""
    return recommended_labels("gpu-deploy-smoke", f"{service}-smoke", "smoke-test")


class SmokeJob(pulumi.ComponentResource):
    config_map: k8s.core.v1.ConfigMap
    job: k8s.batch.v1.Job

    def __init__(self, name: str, args: SmokeJobArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        check_args(args)
        super().__init__("gpu-deploy:kubernetes:SmokeJob", name, None, opts)
        runner = {key: path.read_text(encoding="utf-8") for key, path in SMOKE_FILES.items()}
        object_name = args.object_name(runner)
        labels = smoke_labels(args.service)

        self.config_map = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=object_name, namespace=args.namespace, labels=labels),
            data={**runner, CHECKS_KEY: args.checks_json()},
            immutable=True,  # its name changes with its content
            opts=child_options(self, opts),
        )

        container = k8s.core.v1.ContainerArgs(
            name="smoke",
            image=args.image,
            command=args.command(),
            env=[k8s.core.v1.EnvVarArgs(name="NVIDIA_VISIBLE_DEVICES", value="void")],
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "50m", "memory": "64Mi"},
                limits={"cpu": "500m", "memory": "128Mi"},
            ),
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="smoke", mount_path=MOUNT, read_only=True)],
            termination_message_policy="FallbackToLogsOnError",
            security_context=restricted_container_security(read_only_root=True),
        )
        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=object_name,
                namespace=args.namespace,
                labels=labels,
                annotations={"pulumi.com/replaceUnready": "true"},
            ),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=0,
                active_deadline_seconds=args.active_deadline_s,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        restart_policy="Never",
                        automount_service_account_token=False,
                        containers=[container],
                        security_context=restricted_pod_security(RUN_AS, RUN_AS),
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name="smoke",
                                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(
                                    name=self.config_map.metadata.name, default_mode=0o444
                                ),
                            )
                        ],
                    ),
                ),
            ),
            opts=child_options(
                self,
                opts,
                after=[self.config_map],
                delete_before_replace=True,
                custom_timeouts=pulumi.CustomTimeouts(
                    create=f"{args.timeout_s}s", update=f"{args.timeout_s}s"
                ),
            ),
        )
        self.register_outputs({"name": object_name, "baseUrl": args.base_url})
