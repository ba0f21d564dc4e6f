"""GpuCheck: before any GPU workload, prove in the cluster that a GPU node works for pods.

Creates one Job per GPU card type the stack's services use (in the services' namespace):
- one pod with runtimeClassName `nvidia`, the node selection the workloads use (the product labels GPU
  feature discovery sets under the sharing config), and a limit of as many GPU resources as one node is
  expected to advertise (`capacity`: time-slicing and MPS replicas, MIG instances): the scheduler places
  it only on a node that really advertises that many, so a node whose device plugin refused its config
  (it then advertises none) or shares less than planned fails here;
- it runs `nvidia-smi -L` (the NVIDIA runtime injects it with the `utility` capability): a node whose
  runtime or driver does not work fails here, with nvidia-smi's own message as the pod's termination
  message, which pulumi-kubernetes puts in the failed `pulumi up`;
- non-root, no capabilities, seccomp RuntimeDefault (Pod Security restricted), no service account token.
Pulumi waits for the Job (pulumi-kubernetes awaits Job completion); a failed or unschedulable pod fails
the deploy when the deadline passes. The Job's name carries a hash of what it checks, so a change of card,
capacity or image runs a new check; the GPU workloads depend on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from components.core.vocabulary import GPU_RESOURCE, LABEL_PROFILE, RUNTIME_CLASS, recommended_labels
from components.kubernetes.pod import (
    product_affinity,
    restricted_container_security,
    restricted_pod_security,
)
from components.options import child_options

RUN_AS = 65534  # nobody: nvidia-smi needs no privileges
CHECK_COMMAND = ("nvidia-smi", "-L")


@dataclass(frozen=True)
class GpuCheckArgs:
    card: str  # the profile key: a2, h100 ...
    namespace: str
    image: str  # a pinned image; the profile's CUDA base image
    products: Sequence[str]  # nvidia.com/gpu.product values the node may carry
    resource: str  # nvidia.com/gpu or nvidia.com/gpu.shared
    capacity: int  # GPU resources one node is expected to advertise
    deadline_s: int = 600

    def object_name(self) -> str:
        what = json.dumps(
            [self.card, sorted(self.products), self.resource, self.capacity, self.image, CHECK_COMMAND]
        )
        return f"gpu-check-{self.card}-{hashlib.sha256(what.encode()).hexdigest()[:8]}"


class GpuCheck(pulumi.ComponentResource):
    job: k8s.batch.v1.Job

    def __init__(self, name: str, args: GpuCheckArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        if args.capacity < 1 or not args.products:
            raise ValueError(f"a GPU check needs a capacity >= 1 and product labels, got {args}")
        super().__init__("gpu-deploy:kubernetes:GpuCheck", name, None, opts)
        labels = recommended_labels("gpu-check", args.card)
        count = str(args.capacity)
        container = k8s.core.v1.ContainerArgs(
            name="nvidia-smi",
            image=args.image,
            command=list(CHECK_COMMAND),
            env=[k8s.core.v1.EnvVarArgs(name="NVIDIA_DRIVER_CAPABILITIES", value="utility")],
            resources=k8s.core.v1.ResourceRequirementsArgs(
                requests={"cpu": "10m", "memory": "32Mi", args.resource: count},
                limits={"cpu": "200m", "memory": "64Mi", args.resource: count},
            ),
            termination_message_policy="FallbackToLogsOnError",
            security_context=restricted_container_security(),
        )
        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.object_name(),
                namespace=args.namespace,
                labels=labels,
                annotations={"pulumi.com/replaceUnready": "true", LABEL_PROFILE: args.card},
            ),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=0,
                active_deadline_seconds=args.deadline_s,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        restart_policy="Never",
                        runtime_class_name=RUNTIME_CLASS,
                        automount_service_account_token=False,
                        affinity=product_affinity(args.products),
                        tolerations=[
                            k8s.core.v1.TolerationArgs(
                                key=GPU_RESOURCE, operator="Exists", effect="NoSchedule"
                            )
                        ],
                        containers=[container],
                        security_context=restricted_pod_security(RUN_AS, RUN_AS),
                    ),
                ),
            ),
            opts=child_options(
                self,
                opts,
                delete_before_replace=True,
                custom_timeouts=pulumi.CustomTimeouts(
                    create=f"{args.deadline_s + 60}s", update=f"{args.deadline_s + 60}s"
                ),
            ),
        )
        self.register_outputs({"name": args.object_name(), "capacity": args.capacity})
