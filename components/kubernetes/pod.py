"""Pod-level pieces every gpu-deploy pod shares (workloads, GPU checks, smoke Jobs): Pod Security
"restricted" contexts and the node affinity to a set of GPU products."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi_kubernetes as k8s

from components.core.vocabulary import PRODUCT_LABEL


def restricted_pod_security(
    uid: int, gid: int, fs_group: int | None = None
) -> k8s.core.v1.PodSecurityContextArgs:
    """The pod half of Pod Security "restricted": a non-root user and the runtime's seccomp profile."""
    return k8s.core.v1.PodSecurityContextArgs(
        run_as_user=uid,
        run_as_group=gid,
        fs_group=fs_group,
        run_as_non_root=True,
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def restricted_container_security(*, read_only_root: bool | None = None) -> k8s.core.v1.SecurityContextArgs:
    """The container half: no privilege escalation, every capability dropped, non-root."""
    return k8s.core.v1.SecurityContextArgs(
        allow_privilege_escalation=False,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        read_only_root_filesystem=read_only_root,
        run_as_non_root=True,
    )


def product_affinity(products: Sequence[str]) -> k8s.core.v1.AffinityArgs:
    """Required node affinity: a node whose nvidia.com/gpu.product is one of `products`."""
    return k8s.core.v1.AffinityArgs(
        node_affinity=k8s.core.v1.NodeAffinityArgs(
            required_during_scheduling_ignored_during_execution=k8s.core.v1.NodeSelectorArgs(
                node_selector_terms=[
                    k8s.core.v1.NodeSelectorTermArgs(
                        match_expressions=[
                            k8s.core.v1.NodeSelectorRequirementArgs(
                                key=PRODUCT_LABEL, operator="In", values=list(products)
                            )
                        ]
                    )
                ]
            )
        )
    )
