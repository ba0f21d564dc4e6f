"""The one place that reads and validates a stack's `gpu-deploy:` configuration.

Every mistake becomes a `ConfigError` whose message is one line naming the full key, e.g.
`gpu-deploy:services.app.gpu: expected "all", "none", a count >= 1 or a list of device ids, got "two"`.
Validation finishes before any resource is registered.

errors: ConfigError and pydantic's errors translated to it; fields: the parsed value types; sections,
service, stack: the models; rules_docker, rules_kubernetes: the rules of each target (the Kubernetes
workload and GPU sharing rules are components/core's, their fields mapped to keys there); resolution: the
GPU profile and the Kubernetes sharing spec; reading: the engine's values, secrets and the stack file's
`secure:` values.
"""

from stacks.config.errors import NAMESPACE, ConfigError
from stacks.config.reading import (
    STACK_FILE_VARIABLE,
    check_secure_places,
    read_pulumi_config,
    secure_paths,
    secure_values,
    validate_with_secrets,
)
from stacks.config.resolution import (
    ResolvedStack,
    kubernetes_gpu_demand,
    kubernetes_sharing,
    resolve_profile,
    service_card,
)
from stacks.config.sections import (
    Bastion,
    DockerTarget,
    GpuOperatorConfig,
    GpuSharingConfig,
    ImageConfig,
    KubernetesTarget,
    ProvisionConfig,
)
from stacks.config.service import Healthcheck, Service, header_refs, resolve_header_refs, smoke_checks
from stacks.config.stack import StackConfig, validate

__all__ = [
    "NAMESPACE",
    "STACK_FILE_VARIABLE",
    "Bastion",
    "ConfigError",
    "DockerTarget",
    "GpuOperatorConfig",
    "GpuSharingConfig",
    "Healthcheck",
    "ImageConfig",
    "KubernetesTarget",
    "ProvisionConfig",
    "ResolvedStack",
    "Service",
    "StackConfig",
    "check_secure_places",
    "header_refs",
    "kubernetes_gpu_demand",
    "kubernetes_sharing",
    "read_pulumi_config",
    "resolve_header_refs",
    "resolve_profile",
    "secure_paths",
    "secure_values",
    "service_card",
    "smoke_checks",
    "validate",
    "validate_with_secrets",
]
