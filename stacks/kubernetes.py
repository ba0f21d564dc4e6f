"""The Kubernetes target: a validated stack becomes an explicit provider, the GPU cluster pieces and one
GpuWorkload per service.

Order: the provider (this kubeconfig and context, never the ambient default) -> the services' Namespace
and, for a GPU profile, the GpuCluster (its own namespace, RuntimeClass `nvidia`, the device-plugin
ConfigMap with the sharing config, the GPU Operator or the device plugin + DCGM charts) -> the
GpuWorkloads, each after the cluster pieces and what it `dependsOn` (Pulumi waits for a Deployment to be
ready, so "healthy" and "started" both mean "its pods are ready").

The Docker keys have Kubernetes meanings here (stacks/config.py refuses what has none, before any
resource): `gpu` is a count of `nvidia.com/gpu` (of `nvidia.com/mig-<migProfile>` with MIG), requests
and limits alike; `ports` become a ClusterIP Service; a relative volume is a PersistentVolumeClaim of
`storage.<name>` and an absolute one a hostPath under `target.root`; `healthcheck` becomes start-up,
readiness and liveness probes, the start-up probe allowing `startPeriod` for the model to load;
`cpuFallback` declares a CPU Deployment `<name>-cpu` at 0 replicas and `runOn: cpu` swaps the two: the
GPU Deployment scales to 0 and the CPU one to `replicas` (one config change, and back).

Then, per service with `smoke` checks, a SmokeJob (components/kubernetes/smoke_job.py) after that service's
GpuWorkload: a Job in the namespace runs the standard-library runner against the Service's cluster DNS
name and first port; a failed check fails `pulumi up` with the runner's FAIL line. `whenGpu` checks run
only where the service runs on the GPU (not with `runOn: cpu` or `gpu: none`); `file` and `gpu` checks
need `docker exec` and are refused on kubernetes by stacks/config.py. It waits for its own service only,
not for every workload: one service's smoke test has no reason to wait for another's model download.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_kubernetes as k8s

from components.core import vocabulary
from components.core.catalog import PROFILES, GpuProfile
from components.kubernetes.cluster import (
    GpuCluster,
    GpuClusterArgs,
    OperatorSpec,
    SharingSpec,
    gpu_capacity,
    node_product_labels,
)
from components.kubernetes.gpu_check import GpuCheck, GpuCheckArgs
from components.kubernetes.smoke_job import SmokeJob, SmokeJobArgs
from components.kubernetes.workload import GpuWorkload, GpuWorkloadArgs, ProbeSpec, VolumeSpec
from components.remote.gpu_host import GpuHost, PreflightRequest
from components.remote.runners import HostRunners
from components.remote.ssh import command_connection
from stacks.config import (
    GpuOperatorConfig,
    GpuSharingConfig,
    Healthcheck,
    KubernetesTarget,
    ResolvedStack,
    Service,
    kubernetes_gpu_demand,
    kubernetes_sharing,
    service_card,
    smoke_checks,
)
from stacks.hosts import provisioning, ssh_target

PROVIDER = "kubernetes"
CLUSTER = "nvidia"  # the GpuCluster: nvidia-namespace, nvidia-runtime-class, nvidia-device-plugin-config, ...


def provider(target: KubernetesTarget, *, secret: bool) -> k8s.Provider:
    """The explicit provider every resource uses; an inline kubeconfig (or a secret one) stays secret."""
    kubeconfig: pulumi.Input[str] | None = target.kubeconfig
    if target.kubeconfig is not None and (secret or target.kubeconfig_is_inline):
        kubeconfig = pulumi.Output.secret(target.kubeconfig)
    return k8s.Provider(
        PROVIDER,
        kubeconfig=kubeconfig,
        context=target.context,
        namespace=target.namespace,
        enable_server_side_apply=True,
        # An object that already exists (a team's, in a namespace it shares) is refused with AlreadyExists,
        # never silently taken over, unless the stack asks (pulumi-kubernetes v4.29.0+, await.go Creation)
        upsert_existing_objects=target.adopt_existing,
    )


def probe_spec(check: Healthcheck) -> ProbeSpec:
    """One health check as start-up (a model-load window of startPeriod), readiness and liveness."""
    command: list[str] | None = None
    if check.command is not None:
        command = ["sh", "-c", check.command] if isinstance(check.command, str) else list(check.command)
    return ProbeSpec(
        http_path=check.http.path if check.http else None,
        port=check.http.port if check.http else None,
        command=command,
        interval_s=check.interval,
        timeout_s=check.timeout,
        failure_threshold=check.retries,
        startup_window_s=check.start_period or check.interval * check.retries,
    )


def volume_specs(svc: Service, target: KubernetesTarget) -> list[VolumeSpec]:
    """Relative volumes are PersistentVolumeClaims (sized by `storage`), absolute ones hostPaths."""
    specs: list[VolumeSpec] = []
    for index, volume in enumerate(svc.volumes):
        if volume.is_relative:
            claim = volume.host.removeprefix("./")
            specs.append(
                VolumeSpec(
                    name=claim,
                    mount_path=volume.container,
                    size=svc.storage[claim],
                    read_only=volume.read_only,
                    storage_class=target.storage_class,
                )
            )
        else:
            specs.append(
                VolumeSpec(
                    name=f"host-{index}",
                    mount_path=volume.container,
                    kind="hostPath",
                    host_path=volume.host,
                    read_only=volume.read_only,
                )
            )
    return specs


def service_url(name: str, svc: Service, target: KubernetesTarget) -> str:
    """The service's cluster DNS name and first port: where an in-cluster client reaches it."""
    return vocabulary.service_url(name, target.namespace, svc.ports[0].container_port)


def workload_revision(svc: Service) -> str:
    """What the workload is, as config: a change re-runs its smoke test. Secret values stay out (names in);
    key order does not count (a reformatted stack file is the same workload)."""
    plain = svc.model_dump(mode="json", by_alias=True, exclude={"secret_env"})
    return json.dumps({**plain, "secretEnv": sorted(svc.secret_env)}, sort_keys=True)


def smoke_job_args(name: str, svc: Service, target: KubernetesTarget, *, on_gpu: bool) -> SmokeJobArgs | None:
    """The service's in-cluster smoke test, or None when it has no checks here (or nothing serves)."""
    checks = smoke_checks(svc.smoke, gpu=on_gpu)
    if not checks or not svc.ports or svc.replicas == 0:
        return None
    return SmokeJobArgs(
        service=name,
        namespace=target.namespace,
        base_url=service_url(name, svc, target),
        checks=checks,
        deadline_s=svc.smoke_deadline,
        revision=workload_revision(svc),
    )


def workload_args(
    name: str, svc: Service, target: KubernetesTarget, profile: GpuProfile, sharing: SharingSpec
) -> GpuWorkloadArgs:
    gpu = svc.gpu.count if svc.gpu.mode == "count" else 0
    on_cpu = svc.run_on == "cpu"
    env = dict(svc.env)
    if svc.driver_capabilities and gpu:
        env["NVIDIA_DRIVER_CAPABILITIES"] = svc.driver_capabilities
    return GpuWorkloadArgs(
        name=name,
        namespace=target.namespace,
        image=svc.image,
        user=svc.user,
        command=svc.command_list,
        replicas=0 if on_cpu else svc.replicas,
        gpu=gpu,
        gpu_resource=sharing.resource_name,
        mig_resource=vocabulary.mig_resource(svc.mig_profile) if svc.mig_profile else None,
        cpu_fallback=svc.cpu_fallback,
        cpu_image=svc.cpu_image,
        cpu_env=svc.cpu_env,
        cpu_replicas=svc.replicas if on_cpu else 0,
        ports=[port.container_port for port in svc.ports],
        env=env,
        secret_env=dict(svc.secret_env),
        volumes=volume_specs(svc, target),
        memory_mib=svc.memory,
        cpu=svc.cpu,
        shm_mib=svc.shm_size,
        probe=probe_spec(svc.healthcheck) if svc.healthcheck else None,
        # what GPU feature discovery really labels the node under this sharing (NVIDIA-A2-SHARED ...)
        gpu_products=node_product_labels(sharing, profile) if gpu else (),
        card=profile.key if gpu else None,
    )


def gpu_check_args(
    profile: GpuProfile, sharing: SharingSpec, namespace: str, gpus_per_node: int
) -> GpuCheckArgs:
    """What the in-cluster check asks of one node: with time-slicing or MPS every replica of every GPU (a
    node that shares less, or whose plugin refused its config, cannot take the pod); one GPU resource
    where a pod may ask for no more (failRequestsGreaterThanOne) or MIG partitions vary per node."""
    whole_node = sharing.mig_strategy == "none" and not sharing.fail_requests_greater_than_one
    return GpuCheckArgs(
        card=profile.key,
        namespace=namespace,
        image=profile.base_image,
        products=node_product_labels(sharing, profile),
        resource=sharing.resource_name,
        capacity=gpu_capacity(sharing, profile, gpus_per_node) if whole_node else 1,
    )


def provision_nodes(stack: ResolvedStack) -> list[GpuHost]:
    """GpuHost per listed node, each with its own connection, runners and card."""
    hosts: list[GpuHost] = []
    for name, node in sorted(stack.config.nodes.items()):
        ssh = ssh_target(
            host=node.host, port=node.port, user=node.user, host_key=node.host_key, bastion=node.bastion
        )
        connection = command_connection(ssh, node.ssh_key)
        card = PROFILES[node.profile]
        runners = HostRunners(f"runners-{name}", stack=stack.stack, connection=connection)
        hosts.append(
            GpuHost(
                f"gpu-host-{name}",
                connection=connection,
                runners=runners,
                provisioning=provisioning(stack.config.provision, card),
                preflight=PreflightRequest(profile=card.key),
                cuda_image_for=lambda key: PROFILES[key].base_image,
            )
        )
    return hosts


def deploy(stack: ResolvedStack) -> None:
    config = stack.config
    target = config.target
    profile = stack.profile
    if not isinstance(target, KubernetesTarget) or profile is None:  # config.py refuses `auto` here
        raise TypeError("the kubernetes target needs a kubernetes stack with a named profile")
    services = {name: config.services[name] for name in stack.start_order()}
    sharing = kubernetes_sharing(config, profile)
    operator = config.gpu_operator or GpuOperatorConfig()
    gpus_per_node = (config.gpu_sharing or GpuSharingConfig()).gpus_per_node
    demand = kubernetes_gpu_demand(config)

    # 1. The explicit provider: the only way any resource here reaches a cluster.
    cluster_provider = provider(target, secret="target" in stack.secret_keys)
    on_cluster = pulumi.ResourceOptions(provider=cluster_provider)

    # 2. The services' namespace, unless it exists already (target.createNamespace: false): then it is
    #    never created, relabelled or deleted. Pod Security "restricted" fits every GpuWorkload pod
    #    (non-root, no capabilities, seccomp RuntimeDefault); hostPath volumes need "privileged". One the
    #    stack creates is kept on destroy: deleting a namespace deletes everything in it, claims included.
    host_paths = any(not v.is_relative for s in services.values() for v in s.volumes)
    namespace: k8s.core.v1.Namespace | None = None
    if target.create_namespace:
        namespace = k8s.core.v1.Namespace(
            "namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=target.namespace,
                labels={
                    **vocabulary.PART_OF_LABELS,
                    "pod-security.kubernetes.io/enforce": "privileged" if host_paths else "restricted",
                },
            ),
            opts=pulumi.ResourceOptions.merge(on_cluster, pulumi.ResourceOptions(retain_on_delete=True)),
        )

    # 3. The GPU nodes the stack lists (`nodes`), over SSH: runners, driver, the preflight for the node's
    #    card, toolkit, containerd or MicroK8s given the nvidia runtime, a GPU container on the node.
    nodes = provision_nodes(stack)

    # 4. The GPU cluster pieces (none for profile cpu): runtime class, sharing config, operator.
    cluster: GpuCluster | None = None
    if profile.is_gpu:
        cluster = GpuCluster(
            CLUSTER,
            GpuClusterArgs(
                namespace=operator.namespace,
                distribution=target.distribution,
                sharing=sharing,
                operator=OperatorSpec(
                    enabled=operator.enabled,
                    driver=operator.driver,
                    toolkit=operator.toolkit,
                    chart_version=operator.version,
                ),
                device_plugin_chart_version=operator.device_plugin_version,
                dcgm=operator.dcgm,
                dcgm_chart_version=operator.dcgm_version,
                profile=profile,
                gpus_per_node=gpus_per_node,
                # the stack's own card's services (another card's nodes hold theirs: stacks/config.py)
                gpu_requests_total=sum(
                    count
                    for name, (count, mig) in demand.items()
                    if mig is None and service_card(config, name) == profile.key
                ),
            ),
            opts=pulumi.ResourceOptions(providers=[cluster_provider], depends_on=list(nodes)),
        )

    # 5. Before any GPU workload: a pod proves a GPU node runs GPU containers and advertises what the
    #    sharing config promises (components/kubernetes/gpu_check.py), one per card type the GPU services use.
    checks: dict[str, GpuCheck] = {}
    if cluster is not None:
        before_check: list[pulumi.Resource] = [cluster, *([namespace] if namespace else [])]
        for card in sorted({service_card(config, name) for name in demand}):
            checks[card] = GpuCheck(
                f"gpu-check-{card}",
                gpu_check_args(PROFILES[card], sharing, target.namespace, gpus_per_node),
                opts=pulumi.ResourceOptions(providers=[cluster_provider], depends_on=before_check),
            )

    # 6. One GpuWorkload per enabled service, in dependsOn order.
    workloads: dict[str, GpuWorkload] = {}
    for name, svc in services.items():
        waits_for: list[pulumi.Resource] = [*(workloads[dep] for dep in svc.depends_on)]
        if namespace is not None:
            waits_for.append(namespace)
        if cluster is not None and svc.gpu.wants_gpu:
            waits_for.append(cluster)
        if name in demand and service_card(config, name) in checks:
            waits_for.append(checks[service_card(config, name)])
        workloads[name] = GpuWorkload(
            name,
            workload_args(name, svc, target, PROFILES[service_card(config, name)], sharing),
            opts=pulumi.ResourceOptions(providers=[cluster_provider], depends_on=waits_for),
        )

    # 7. Smoke tests in the cluster, each after its own service's pods are ready.
    for name, svc in services.items():
        smoke_args = smoke_job_args(name, svc, target, on_gpu=name in demand)
        if smoke_args is not None:
            SmokeJob(
                f"smoke-{name}",
                smoke_args,
                opts=pulumi.ResourceOptions(providers=[cluster_provider], depends_on=[workloads[name]]),
            )

    pulumi.export("profile", profile.key)
    pulumi.export("target", f"kubernetes:{target.context}")
    pulumi.export("namespace", target.namespace)
    pulumi.export(
        "gpuSharing",
        {
            "strategy": sharing.strategy,
            "replicas": sharing.replicas,
            "resource": sharing.resource_name,
            "capacity": gpu_capacity(sharing, profile, gpus_per_node) if profile.is_gpu else 0,
            "requested": sum(count for count, _ in demand.values()),
        },
    )
    pulumi.export(
        "services",
        {
            name: {
                "runsOn": "gpu" if name in demand else "cpu",
                "gpu": demand[name][0] if name in demand else 0,
                "urls": [vocabulary.service_url(name, target.namespace, p.container_port) for p in svc.ports],
            }
            for name, svc in services.items()
        },
    )
    images: dict[str, str] = {}
    for name, svc in services.items():
        images[name] = svc.image
        if svc.cpu_fallback:
            images[f"{name}-cpu"] = svc.cpu_image or svc.image
    pulumi.export("images", images)
    pulumi.export("startOrder", list(services))
