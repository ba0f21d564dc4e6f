"""`python -m stacks render STACK --out DIR`: the Kubernetes objects of a stack's offline plan as plain YAML.

Every Kubernetes object the program registers (the plan's resource inputs, what a real apply sends)
goes through stacks.wire.to_manifest into `DIR/<kind>-<name>.yaml`, one object per file,
ready for `kubectl apply --dry-run=server -f DIR`, kubeconform or a review. Two things are not the same
as the apply:
- Secret values never reach a file: each key of a Secret keeps the placeholder "[secret]" (the keys are
  those the pods read through secretKeyRef) and a note on stderr says so.
- A Helm release is not a Kubernetes object (the chart renders many, in the cluster): it goes to
  `DIR/helm/<release>.values.yaml`, its values with the chart, repository and version in a header
  comment for `helm template`, and a note on stderr.

DIR must be new, empty, or an earlier render's (it holds `.gpu-deploy-render`, and is then replaced).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.core.vocabulary import SECRET_PLACEHOLDER, UNKNOWN_PLACEHOLDER
from stacks.plan import Plan, PlanError
from stacks.wire import to_manifest

MARKER = ".gpu-deploy-render"
HELM_DIR = "helm"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the device plugin's config inside the ConfigMap) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # PyYAML quotes it instead where a block cannot hold it
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False)


@dataclass
class Rendered:
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)  # file name -> object
    helm: dict[str, str] = field(default_factory=dict)  # helm/<release>.values.yaml -> text
    notes: list[str] = field(default_factory=list)


def file_name(manifest: dict[str, Any]) -> str:
    return f"{manifest['kind'].lower()}-{str(manifest['metadata']['name']).lower()}.yaml"


def _secret_keys(manifests: list[dict[str, Any]]) -> dict[tuple[str | None, str], set[str]]:
    """(namespace, Secret name) -> the keys pods read from it through secretKeyRef."""
    found: dict[tuple[str | None, str], set[str]] = {}

    def walk(node: Any, namespace: str | None) -> None:
        if isinstance(node, dict):
            ref = node.get("secretKeyRef")
            if isinstance(ref, dict) and "name" in ref and "key" in ref:
                found.setdefault((namespace, str(ref["name"])), set()).add(str(ref["key"]))
            for value in node.values():
                walk(value, namespace)
        elif isinstance(node, list):
            for value in node:
                walk(value, namespace)

    for manifest in manifests:
        walk(manifest.get("spec"), manifest.get("metadata", {}).get("namespace"))
    return found


def _withhold_secret_values(manifest: dict[str, Any], keys: set[str]) -> bool:
    """Replace a Secret's values (all of them) by the placeholder; True when there were any."""
    withheld = False
    for section in ("data", "stringData"):
        values = manifest.get(section)
        if values is None:
            continue
        names = set(values) if isinstance(values, dict) else keys
        manifest[section] = {name: SECRET_PLACEHOLDER for name in sorted(names)}
        withheld = True
    return withheld


def _helm_values(inputs: dict[str, Any]) -> str:
    chart, version = inputs.get("chart", "?"), inputs.get("version", "?")
    repo = (inputs.get("repositoryOpts") or {}).get("repo", "?")
    name, namespace = inputs.get("name", "?"), inputs.get("namespace", "?")
    header = (
        f"# Helm release {name} (not a Kubernetes object: the chart renders its objects in the cluster)\n"
        f"# chart {chart} {version} from {repo}, namespace {namespace}. To see what it creates:\n"
        f"#   helm template {name} {chart} --repo {repo} --version {version} -n {namespace} -f THIS_FILE\n"
    )
    return header + dump(inputs.get("values") or {})


def render(plan: Plan) -> Rendered:
    """The plan's Kubernetes objects as manifests (and its Helm releases as values files)."""
    result = Rendered()
    objects: list[dict[str, Any]] = []
    for resource in plan.resources:
        if not resource.type.startswith("kubernetes:"):
            continue
        manifest = to_manifest(resource.type, resource.inputs)
        if manifest is None:
            if resource.type == HELM_RELEASE:
                release = str(resource.inputs.get("name") or resource.name)
                result.helm[f"{HELM_DIR}/{release}.values.yaml"] = _helm_values(resource.inputs)
                result.notes.append(
                    f"Helm release {release} ({resource.inputs.get('chart')} "
                    f"{resource.inputs.get('version')}) is not a Kubernetes object: its values are in "
                    f"{HELM_DIR}/{release}.values.yaml"
                )
            else:
                result.notes.append(f"{resource.type} {resource.name} is not a Kubernetes object: skipped")
            continue
        if UNKNOWN_PLACEHOLDER in json.dumps(manifest):
            raise PlanError(f"{resource.type} {resource.name} holds values known only at deploy time")
        objects.append(manifest)
    secret_keys = _secret_keys(objects)
    for manifest in objects:
        meta = manifest.get("metadata", {})
        if manifest["kind"] == "Secret":
            keys = secret_keys.get((meta.get("namespace"), str(meta.get("name"))), set())
            if _withhold_secret_values(manifest, keys):
                result.notes.append(f"Secret {meta.get('name')}: values withheld ({SECRET_PLACEHOLDER})")
        name = file_name(manifest)
        if name in result.manifests:
            raise PlanError(f"two objects would both be written to {name} (same kind and name)")
        result.manifests[name] = manifest
    if not result.manifests:
        raise PlanError(
            f"stack {plan.stack} registers no Kubernetes objects (is its target.kind kubernetes?)"
        )
    return result


def write(rendered: Rendered, out: Path) -> list[Path]:
    """Write the files under `out` (new, empty, or an earlier render's, which is replaced)."""
    if out.exists():
        if not out.is_dir():
            raise PlanError(f"{out} is not a directory")
        entries = list(out.iterdir())
        if entries and not (out / MARKER).is_file():
            raise PlanError(
                f"{out} is not empty and holds no earlier render ({MARKER}): pick a new directory"
            )
        for old in [*out.glob("*.yaml"), *(out / HELM_DIR).glob("*.yaml")]:
            old.unlink()
    (out / HELM_DIR).mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `python -m stacks render`; replaced by the next render\n")
    written: list[Path] = []
    for name, manifest in sorted(rendered.manifests.items()):
        path = out / name
        path.write_text(dump(manifest))
        written.append(path)
    for name, text in sorted(rendered.helm.items()):
        path = out / name
        path.write_text(text)
        written.append(path)
    return written
