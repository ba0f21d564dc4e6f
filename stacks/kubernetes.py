"""The Kubernetes target: a validated stack becomes an explicit provider, the GPU cluster pieces and one
GpuWorkload per service.

Order: the provider (this kubeconfig and context, never the ambient default) -> the services' Namespace
and, for a GPU profile, the GpuCluster (its own namespace, RuntimeClass `nvidia`, the device-plugin
ConfigMap with the sharing config, the GPU Operator or the device plugin + DCGM charts) -> the
GpuWorkloads, each after the cluster pieces and what it `dependsOn` (Pulumi waits for a Deployment to be
ready, so "healthy" and "started" both mean "its pods are ready").

The Docker keys have Kubernetes meanings here (stacks/config refuses what has none, before any
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
need `docker exec` and are refused on kubernetes by stacks/config. It waits for its own service only,
not for every workload: one service's smoke test has no reason to wait for another's model download.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components.core import vocabulary
from components.core.catalog import GpuProfile
from components.core.gpu_memory import Rollout
from components.core.sharing import SharingSpec, gpu_capacity
from components.kubernetes.cluster import (
    GpuCluster,
    GpuClusterArgs,
    OperatorSpec,
)
from components.kubernetes.gpu_check import GpuCheck
from components.kubernetes.smoke_job import SmokeJob
from components.kubernetes.workload import GpuWorkload
from components.remote.gpu_host import GpuHost, PreflightRequest
from components.remote.runners import HostRunners
from components.remote.ssh import command_connection
from stacks.config import (
    GpuOperatorConfig,
    GpuSharingConfig,
    KubernetesTarget,
    ResolvedStack,
    Service,
    StackConfig,
    kubernetes_gpu_demand,
    kubernetes_sharing,
    service_card,
)
from stacks.config.budgets import kubernetes_rollouts
from stacks.config.cards import card_json_of
from stacks.hosts import provisioning, ssh_target
from stacks.kubernetes_args import gpu_check_args, smoke_job_args, workload_args

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


def provision_nodes(stack: ResolvedStack) -> list[GpuHost]:
    """GpuHost per listed node, each with its own connection, runners and card."""
    hosts: list[GpuHost] = []
    for name, node in sorted(stack.config.nodes.items()):
        ssh = ssh_target(
            host=node.host, port=node.port, user=node.user, host_key=node.host_key, bastion=node.bastion
        )
        connection = command_connection(ssh, node.ssh_key)
        card = stack.card(node.profile)
        runners = HostRunners(f"runners-{name}", stack=stack.stack, connection=connection)
        hosts.append(
            GpuHost(
                f"gpu-host-{name}",
                connection=connection,
                runners=runners,
                provisioning=provisioning(stack.config.provision, card),
                preflight=PreflightRequest(profile=card.key, card=card_json_of(stack.config, card.key)),
                cuda_image=card.base_image,
                min_driver=card.min_driver,
            )
        )
    return hosts


def own_namespace(
    target: KubernetesTarget, services: dict[str, Service], on_cluster: pulumi.ResourceOptions
) -> k8s.core.v1.Namespace | None:
    """The services' namespace, unless it exists already (target.createNamespace: false): then it is never
    created, relabelled or deleted. Pod Security "restricted" fits every GpuWorkload pod (non-root, no
    capabilities, seccomp RuntimeDefault); hostPath volumes need "privileged". One the stack creates is
    kept on destroy: deleting a namespace deletes everything in it, claims included."""
    if not target.create_namespace:
        return None
    host_paths = any(not v.is_relative for s in services.values() for v in s.volumes)
    return k8s.core.v1.Namespace(
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


def gpu_cluster(
    stack: ResolvedStack,
    profile: GpuProfile,
    sharing: SharingSpec,
    *,
    cluster_provider: k8s.Provider,
    nodes: list[GpuHost],
) -> GpuCluster | None:
    """Runtime class, sharing config, the GPU Operator (or device plugin and DCGM); none for profile cpu."""
    if not profile.is_gpu:
        return None
    config = stack.config
    target = config.target
    assert isinstance(target, KubernetesTarget)
    operator = config.gpu_operator or GpuOperatorConfig()
    demand = kubernetes_gpu_demand(config)
    return GpuCluster(
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
            gpus_per_node=gpus_per_node(config),
            # the stack's own card's services (another card's nodes hold theirs: stacks/config)
            gpu_requests_total=sum(
                count
                for name, (count, mig) in demand.items()
                if mig is None and service_card(config, name) == profile.key
            ),
        ),
        opts=pulumi.ResourceOptions(providers=[cluster_provider], depends_on=list(nodes)),
    )


def gpus_per_node(config: StackConfig) -> int:
    return (config.gpu_sharing or GpuSharingConfig()).gpus_per_node


def gpu_checks(
    stack: ResolvedStack,
    sharing: SharingSpec,
    *,
    cluster: GpuCluster | None,
    namespace: k8s.core.v1.Namespace | None,
    cluster_provider: k8s.Provider,
) -> dict[str, GpuCheck]:
    """Before any GPU workload: a pod proves a GPU node runs GPU containers and advertises what the sharing
    config promises (components/kubernetes/gpu_check.py), one per card type the GPU services use."""
    if cluster is None:
        return {}
    config = stack.config
    target = config.target
    assert isinstance(target, KubernetesTarget)
    before_check: list[pulumi.Resource] = [cluster, *([namespace] if namespace else [])]
    return {
        card: GpuCheck(
            f"gpu-check-{card}",
            gpu_check_args(stack.card(card), sharing, target.namespace, gpus_per_node(config)),
            opts=pulumi.ResourceOptions(providers=[cluster_provider], depends_on=before_check),
        )
        for card in sorted({service_card(config, name) for name in kubernetes_gpu_demand(config)})
    }


def start_workloads(
    stack: ResolvedStack,
    services: dict[str, Service],
    sharing: SharingSpec,
    *,
    namespace: k8s.core.v1.Namespace | None,
    cluster: GpuCluster | None,
    checks: dict[str, GpuCheck],
    rollouts: dict[str, Rollout],
    cluster_provider: k8s.Provider,
) -> dict[str, GpuWorkload]:
    """One GpuWorkload per enabled service, in dependsOn order, a GPU one after its card's GPU check."""
    config = stack.config
    target = config.target
    assert isinstance(target, KubernetesTarget)
    demand = kubernetes_gpu_demand(config)
    workloads: dict[str, GpuWorkload] = {}
    for name, svc in services.items():
        card = service_card(config, name)
        waits_for: list[pulumi.Resource] = [*(workloads[dep] for dep in svc.depends_on)]
        if namespace is not None:
            waits_for.append(namespace)
        if cluster is not None and svc.gpu.wants_gpu:
            waits_for.append(cluster)
        if name in demand and card in checks:
            waits_for.append(checks[card])
        workloads[name] = GpuWorkload(
            name,
            workload_args(name, svc, target, stack.card(card), sharing, rollout=rollouts.get(name)),
            opts=pulumi.ResourceOptions(providers=[cluster_provider], depends_on=waits_for),
        )
    return workloads


def smoke_test_workloads(
    stack: ResolvedStack,
    services: dict[str, Service],
    workloads: dict[str, GpuWorkload],
    *,
    cluster_provider: k8s.Provider,
) -> None:
    """Smoke tests in the cluster, each after its own service's pods are ready."""
    target = stack.config.target
    assert isinstance(target, KubernetesTarget)
    demand = kubernetes_gpu_demand(stack.config)
    for name, svc in services.items():
        smoke_args = smoke_job_args(name, svc, target, on_gpu=name in demand)
        if smoke_args is not None:
            SmokeJob(
                f"smoke-{name}",
                smoke_args,
                opts=pulumi.ResourceOptions(providers=[cluster_provider], depends_on=[workloads[name]]),
            )


def export_outputs(
    stack: ResolvedStack,
    profile: GpuProfile,
    sharing: SharingSpec,
    services: dict[str, Service],
    rollouts: dict[str, Rollout],
) -> None:
    config = stack.config
    target = config.target
    assert isinstance(target, KubernetesTarget)
    demand = kubernetes_gpu_demand(config)
    pulumi.export("profile", profile.key)
    pulumi.export("target", f"kubernetes:{target.context}")
    pulumi.export("namespace", target.namespace)
    pulumi.export(
        "gpuSharing",
        {
            "strategy": sharing.strategy,
            "replicas": sharing.replicas,
            "resource": sharing.resource_name,
            "capacity": gpu_capacity(sharing, profile, gpus_per_node(config)) if profile.is_gpu else 0,
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
    # how each workload rolls (stacks/config/budgets.py): the mode, why and the expected interruption
    pulumi.export("rollout", {name: r.as_json() for name, r in rollouts.items()})


def deploy(stack: ResolvedStack) -> None:
    """The cluster's deployment, step by step."""
    config = stack.config
    target = config.target
    profile = stack.profile
    if not isinstance(target, KubernetesTarget) or profile is None:  # config refuses `auto` here
        raise TypeError("the kubernetes target needs a kubernetes stack with a named profile")
    services = {name: config.services[name] for name in stack.start_order()}
    sharing = kubernetes_sharing(config, profile)

    # 1. The explicit provider: the only way any resource here reaches a cluster.
    cluster_provider = provider(target, secret="target" in stack.secret_keys)
    on_cluster = pulumi.ResourceOptions(provider=cluster_provider)

    # 2. The services' namespace (unless it exists already).
    namespace = own_namespace(target, services, on_cluster)

    # 3. The GPU nodes the stack lists (`nodes`), over SSH: runners, driver, the preflight for the node's
    #    card, toolkit, containerd or MicroK8s given the nvidia runtime, a GPU container on the node.
    nodes = provision_nodes(stack)

    # 4. The GPU cluster pieces, then 5. a GPU check per card type the GPU services use.
    cluster = gpu_cluster(stack, profile, sharing, cluster_provider=cluster_provider, nodes=nodes)
    checks = gpu_checks(
        stack, sharing, cluster=cluster, namespace=namespace, cluster_provider=cluster_provider
    )

    # 6. The workloads, each rolling as decided before anything exists (stacks/config/budgets.py), then
    # 7. their smoke tests, then the outputs.
    rollouts = kubernetes_rollouts(stack)
    workloads = start_workloads(
        stack,
        services,
        sharing,
        namespace=namespace,
        cluster=cluster,
        checks=checks,
        rollouts=rollouts,
        cluster_provider=cluster_provider,
    )
    smoke_test_workloads(stack, services, workloads, cluster_provider=cluster_provider)
    export_outputs(stack, profile, sharing, services, rollouts)
