"""GpuWorkload: one service as a Kubernetes Deployment that asks for NVIDIA GPUs.

Creates, in order (all children of the component, in `args.namespace`, which it does not create):
1. a PersistentVolumeClaim `<name>-<volume>` per `pvc` volume (kept on delete: it holds data);
2. the Secret `<name>-env` when there is `secret_env`; containers read each key through
   `valueFrom.secretKeyRef`, so no secret value is ever a plain `env` value in the pod spec or state;
3. the Deployment `<name>`: `runtimeClassName: nvidia`,
   `nvidia.com/gpu` (or a MIG resource) in both requests and limits, the `nvidia.com/gpu:NoSchedule`
   toleration and a `nvidia.com/gpu.product` node selector (node affinity for several products) for
   GPU pods; a non-root user, no privilege escalation, all capabilities dropped, seccomp
   RuntimeDefault; memory request = limit; start-up, readiness and liveness probes where the start-up
   probe gives a slow model load its own window. A GPU Deployment uses the Recreate strategy unless
   `rollout` is "zero-downtime": a rolling update starts the new pod while the old one still holds the
   GPU, so it needs a spare GPU resource and memory for that surge pod (the stack checks both:
   stacks/config/budgets.py), or the new pod would stay Pending forever;
4. with `cpu_fallback`, a second Deployment `<name>-cpu`: no GPU, no runtime class,
   `cpu_image`/`cpu_env` (e.g. WHISPER__INFERENCE_DEVICE=cpu) and `cpu_replicas` replicas, 0 by default;
5. the ClusterIP Service `<name>` for `ports`, selecting the pods of both variants.

Why the CPU fallback is a second, scaled-down Deployment: Kubernetes cannot say "a GPU if one is
free" in one pod spec. A pod that requests `nvidia.com/gpu` stays Pending where none is allocatable;
a pod that does not request one never gets one (and node affinity can prefer nodes, not add resource
requests). Running both at once would double the memory and split traffic between a fast and a slow
backend. So the fallback is declared up front, with its image and settings reviewed like the GPU one,
at 0 replicas; falling back (GPU node down, driver broken, card removed) is a config flip that sets
`cpu_replicas: 1` and `replicas: 0` and runs `pulumi up`, and rolling back is the reverse. Both
variants carry the same `app.kubernetes.io/name`/`instance` labels, so the Service finds whichever
runs. CPU pods get NVIDIA_VISIBLE_DEVICES=void: on a node whose default containerd runtime is
`nvidia` (MicroK8s with the GPU Operator), a CUDA image would otherwise see every GPU without the
scheduler knowing.

Other notes: `command` maps to the container's `args` (like Docker's CMD; the image's entrypoint stays).
PVCs carry `pulumi.com/skipAwait` because a WaitForFirstConsumer storage class binds only once a pod
uses the claim; the Deployment's own await reports a claim that never binds. Changing `secret_env`
updates the Secret but does not restart pods: `kubectl rollout restart` them.
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_kubernetes as k8s

from components.core.values import check_image_pinned
from components.core.vocabulary import (
    GPU_RESOURCE,
    LABEL_PROFILE,
    PRODUCT_LABEL,
    RUNTIME_CLASS,
    recommended_labels,
)
from components.kubernetes.pod import product_affinity, restricted_container_security, restricted_pod_security
from components.kubernetes.workload_spec import GpuWorkloadArgs, ProbeSpec, VolumeSpec, check_args
from components.options import child_options

PROFILE_ANNOTATION = LABEL_PROFILE

VARIANT_LABEL = "gpu-deploy/variant"


def _pinned(image: str) -> str:
    check_image_pinned(image)
    return image


def workload_labels(args: GpuWorkloadArgs) -> dict[str, str]:
    return recommended_labels(args.name, args.name, args.component)


def _probe(spec: ProbeSpec, default_port: int | None, failure_threshold: int) -> k8s.core.v1.ProbeArgs:
    port = spec.port if spec.port is not None else default_port
    http = None
    if spec.http_path is not None and port is not None:  # check_args guarantees a port for http probes
        http = k8s.core.v1.HTTPGetActionArgs(path=spec.http_path, port=port)
    return k8s.core.v1.ProbeArgs(
        http_get=http,
        exec_=k8s.core.v1.ExecActionArgs(command=list(spec.command)) if spec.command else None,
        period_seconds=spec.interval_s,
        timeout_seconds=spec.timeout_s,
        failure_threshold=failure_threshold,
    )


def deployment_strategy(rollout: str | None, *, wants_gpu: bool) -> k8s.apps.v1.DeploymentStrategyArgs | None:
    """RollingUpdate with one surge pod and none unavailable for zero downtime, Recreate for stop-first;
    without a rollout Recreate for a GPU Deployment (the old pod must free its GPU before the new one can
    be scheduled) and the Kubernetes default (a rolling update) otherwise."""
    if rollout == "zero-downtime":
        return k8s.apps.v1.DeploymentStrategyArgs(
            type="RollingUpdate",
            rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=1, max_unavailable=0),
        )
    if rollout == "stop-first" or (rollout is None and wants_gpu):
        return k8s.apps.v1.DeploymentStrategyArgs(type="Recreate")
    return None


def _port_name(port: int) -> str:
    return f"tcp-{port}"


class GpuWorkload(pulumi.ComponentResource):
    workload: k8s.apps.v1.Deployment
    cpu_workload: k8s.apps.v1.Deployment | None
    service: k8s.core.v1.Service | None
    secret: k8s.core.v1.Secret | None
    claims: list[k8s.core.v1.PersistentVolumeClaim]

    def __init__(self, name: str, args: GpuWorkloadArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        check_args(args)
        super().__init__("gpu-deploy:kubernetes:GpuWorkload", name, None, opts)
        self._args = args
        self._labels = workload_labels(args)
        self._opts = opts
        child = child_options(self, opts)
        # A claim holds data (models, caches): disabling, renaming or moving the service, or destroying the
        # stack, leaves the PersistentVolumeClaim in the cluster (delete it by hand when the data may go).
        keep = child_options(self, opts, retain_on_delete=True)

        self.claims = []
        self._claim_names: dict[str, pulumi.Output[str]] = {}
        for volume in args.volumes:
            if volume.kind != "pvc":
                continue
            claim = k8s.core.v1.PersistentVolumeClaim(
                f"{name}-{volume.name}",
                metadata=self._meta(f"{args.name}-{volume.name}", {"pulumi.com/skipAwait": "true"}),
                spec=self._claim_spec(volume),
                opts=keep,
            )
            self.claims.append(claim)
            self._claim_names[volume.name] = claim.metadata.name

        self.secret = None
        self._secret_name: pulumi.Output[str] | None = None
        if args.secret_env:
            self.secret = k8s.core.v1.Secret(
                f"{name}-env",
                metadata=self._meta(f"{args.name}-env"),
                type="Opaque",
                string_data={k: pulumi.Output.secret(v) for k, v in sorted(args.secret_env.items())},
                opts=child,
            )
            self._secret_name = self.secret.metadata.name

        self.service = None
        if args.ports:
            self.service = k8s.core.v1.Service(
                f"{name}-service",
                metadata=self._meta(args.name),
                spec=k8s.core.v1.ServiceSpecArgs(
                    type="ClusterIP",
                    selector={
                        "app.kubernetes.io/name": args.name,
                        "app.kubernetes.io/instance": args.name,
                    },
                    ports=[
                        k8s.core.v1.ServicePortArgs(name=_port_name(p), port=p, target_port=p, protocol="TCP")
                        for p in args.ports
                    ],
                ),
                opts=child,
            )

        wants_gpu = args.gpu > 0
        self.workload = self._workload(
            resource_name=name,
            object_name=args.name,
            fallback=False,
            replicas=args.replicas,
            wants_gpu=wants_gpu,
            image=args.image,
            env={},
        )
        self.cpu_workload = None
        if args.cpu_fallback:
            self.cpu_workload = self._workload(
                resource_name=f"{name}-cpu",
                object_name=f"{args.name}-cpu",
                fallback=True,
                replicas=args.cpu_replicas,
                wants_gpu=False,
                image=args.cpu_image or args.image,
                env=args.cpu_env,
            )

        self.register_outputs(
            {
                "name": args.name,
                "namespace": args.namespace,
                "urls": [f"http://{args.name}.{args.namespace}.svc.cluster.local:{p}" for p in args.ports],
            }
        )

    def _meta(
        self, object_name: str, annotations: Mapping[str, str] | None = None
    ) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(
            name=object_name,
            namespace=self._args.namespace,
            labels=self._labels,
            annotations=dict(annotations) if annotations else None,
        )

    @staticmethod
    def _claim_spec(volume: VolumeSpec) -> k8s.core.v1.PersistentVolumeClaimSpecArgs:
        return k8s.core.v1.PersistentVolumeClaimSpecArgs(
            access_modes=["ReadWriteOnce"],
            storage_class_name=volume.storage_class,
            resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": volume.size or ""}),
        )

    def _env(self, overrides: Mapping[str, str], wants_gpu: bool) -> list[k8s.core.v1.EnvVarArgs]:
        plain = {**self._args.env, **overrides}
        if not wants_gpu:
            plain.setdefault("NVIDIA_VISIBLE_DEVICES", "void")
        env = [k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in sorted(plain.items())]
        if self._secret_name is not None:
            env += [
                k8s.core.v1.EnvVarArgs(
                    name=key,
                    value_from=k8s.core.v1.EnvVarSourceArgs(
                        secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=self._secret_name, key=key)
                    ),
                )
                for key in sorted(self._args.secret_env)
                if key not in overrides  # the fallback's own plain value wins
            ]
        return env

    def _resources(self, wants_gpu: bool) -> k8s.core.v1.ResourceRequirementsArgs:
        args = self._args
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        if args.memory_mib is not None:
            requests["memory"] = limits["memory"] = f"{args.memory_mib}Mi"
        if args.cpu is not None:
            requests["cpu"] = args.cpu
        if wants_gpu:
            resource = args.mig_resource or args.gpu_resource
            # An extended resource may not be overcommitted: the request must equal the limit.
            requests[resource] = limits[resource] = str(args.gpu)
        return k8s.core.v1.ResourceRequirementsArgs(requests=requests or None, limits=limits or None)

    def _pod_spec(
        self, *, fallback: bool, wants_gpu: bool, image: pulumi.Input[str], env: Mapping[str, str]
    ) -> k8s.core.v1.PodSpecArgs:
        args = self._args
        volumes: list[k8s.core.v1.VolumeArgs] = []
        mounts: list[k8s.core.v1.VolumeMountArgs] = []
        for volume in args.volumes:
            mounts.append(
                k8s.core.v1.VolumeMountArgs(
                    name=volume.name, mount_path=volume.mount_path, read_only=volume.read_only
                )
            )
            if volume.kind == "hostPath":
                volumes.append(
                    k8s.core.v1.VolumeArgs(
                        name=volume.name,
                        host_path=k8s.core.v1.HostPathVolumeSourceArgs(
                            path=volume.host_path or "", type="DirectoryOrCreate"
                        ),
                    )
                )
            else:
                volumes.append(
                    k8s.core.v1.VolumeArgs(
                        name=volume.name,
                        persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                            claim_name=self._claim_names[volume.name], read_only=volume.read_only
                        ),
                    )
                )
        if args.shm_mib:
            volumes.append(
                k8s.core.v1.VolumeArgs(
                    name="dshm",
                    empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                        medium="Memory", size_limit=f"{args.shm_mib}Mi"
                    ),
                )
            )
            mounts.append(k8s.core.v1.VolumeMountArgs(name="dshm", mount_path="/dev/shm"))  # noqa: S108 (the pod's own shm)

        probe = args.probe
        default_port = args.ports[0] if args.ports else None
        products = [] if fallback else list(args.gpu_products)
        selector = {PRODUCT_LABEL: products[0]} if len(products) == 1 else {}

        container = k8s.core.v1.ContainerArgs(
            name=args.name,
            image=pulumi.Output.from_input(image).apply(_pinned),
            args=list(args.command) if args.command is not None else None,
            env=self._env(env, wants_gpu),
            ports=[
                k8s.core.v1.ContainerPortArgs(name=_port_name(p), container_port=p, protocol="TCP")
                for p in args.ports
            ]
            or None,
            resources=self._resources(wants_gpu),
            volume_mounts=mounts or None,
            startup_probe=_probe(probe, default_port, probe.startup_failure_threshold) if probe else None,
            readiness_probe=_probe(probe, default_port, probe.failure_threshold) if probe else None,
            liveness_probe=_probe(probe, default_port, probe.failure_threshold) if probe else None,
            security_context=restricted_container_security(),
        )
        return k8s.core.v1.PodSpecArgs(
            containers=[container],
            runtime_class_name=RUNTIME_CLASS if wants_gpu else None,
            node_selector=selector or None,
            affinity=product_affinity(products) if len(products) > 1 else None,
            tolerations=[k8s.core.v1.TolerationArgs(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")]
            if wants_gpu or products
            else None,
            security_context=restricted_pod_security(args.user.uid, args.user.gid, fs_group=args.user.gid),
            volumes=volumes or None,
        )

    def _workload(
        self,
        *,
        resource_name: str,
        object_name: str,
        fallback: bool,
        replicas: int,
        wants_gpu: bool,
        image: pulumi.Input[str],
        env: Mapping[str, str],
    ) -> k8s.apps.v1.Deployment:
        args = self._args
        # Selects one variant's pods only, so the GPU and CPU Deployments never adopt each other's.
        variant = "gpu" if wants_gpu else "cpu"
        selector = {
            "app.kubernetes.io/name": args.name,
            "app.kubernetes.io/instance": args.name,
            VARIANT_LABEL: variant,
        }
        labels = {**self._labels, VARIANT_LABEL: variant}
        template = k8s.core.v1.PodTemplateSpecArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
            spec=self._pod_spec(
                fallback=fallback,
                wants_gpu=wants_gpu,
                image=image,
                env=env,
            ),
        )
        # the card the pods run on, for the policy pack (policy/validators.py reads io.gpu-deploy.profile)
        annotations = {PROFILE_ANNOTATION: args.card} if wants_gpu and args.card else None
        metadata = k8s.meta.v1.ObjectMetaArgs(
            name=object_name, namespace=args.namespace, labels=labels, annotations=annotations
        )
        opts = child_options(self, self._opts)
        return k8s.apps.v1.Deployment(
            resource_name,
            metadata=metadata,
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=replicas,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                template=template,
                strategy=None if fallback else deployment_strategy(args.rollout, wants_gpu=wants_gpu),
            ),
            opts=opts,
        )
