"""`python -m stacks`: the offline plan and stack listing.

    python -m stacks plan STACK [--config-file FILE] [--json] [--preview]
    python -m stacks sources STACK [--config-file FILE] [--check]
    python -m stacks list
    python -m stacks diff STACK (--config-file OTHER | --against GIT_REF) [--json]
    python -m stacks render STACK --out DIR [--config-file FILE]

`plan`'s text has a `rollout:` section after the tree (how each service rolls: stacks/rollout_view.py);
`diff`'s Markdown says it for each replaced service.

Exit codes: 0 success, 2 a config error (one line on stderr naming the key), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stacks import load
from stacks.config import ConfigError
from stacks.diff import diff_plans, render_text
from stacks.diff_sources import DiffConfigError, empty_plan, plan_at
from stacks.host_cli import add_parsers as add_host_parsers
from stacks.plan import PROJECT_DIR, Plan, PlanError, execute, list_stacks, prepare
from stacks.plan_view import ordered_children, summary
from stacks.rollout_view import ROLLOUT_OUTPUT, plan_section
from stacks.stackfile import read_stack

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def render_tree(plan: Plan) -> str:
    """The plan as text: the tree in deploy order, each line whole (stacks/plan_view.py), then the rollout."""
    children = ordered_children(plan)
    lines = [f"{plan.project}/{plan.stack}"]

    def walk(parent: str | None, indent: str) -> None:
        items = children.get(parent, [])
        for index, resource in enumerate(items):
            last = index == len(items) - 1
            lines.append(
                f"{indent}{'└─ ' if last else '├─ '}{resource.type} {resource.name}{summary(resource)}"
            )
            walk(resource.urn, indent + ("   " if last else "│  "))

    roots = children.get(None, [])
    for root in roots:
        walk(root.urn, "")
    lines += plan_section(plan.outputs)  # how each service rolls: its own section, not an output line
    shown = {key: value for key, value in plan.outputs.items() if key != ROLLOUT_OUTPUT}
    if shown:
        lines.append("outputs:")
        lines += [f"  {key}: {json.dumps(value)}" for key, value in sorted(shown.items())]
    for warning in plan.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def run_plan(stack: str, config_file: Path | None, *, preview: bool) -> Plan:
    """Validate first (a config error exits 2 before any resource), then run the program."""
    plan = prepare(stack, config_file=config_file, preview=preview)
    load()  # the same validation the program does, so a mistake never reaches a resource
    return execute(plan)


def cmd_plan(args: argparse.Namespace) -> int:
    config_file = Path(args.config_file) if args.config_file else None
    plan = run_plan(args.stack, config_file, preview=args.preview)
    if args.json:
        print(json.dumps(plan.as_json(), indent=2, sort_keys=True))
        for warning in plan.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    else:
        print(render_tree(plan))
    return EXIT_OK


def _stack_summary(path: Path) -> dict[str, Any]:
    doc = read_stack(path) or {}
    config = doc.get("config") or {}
    target = config.get("gpu-deploy:target") or {}
    host = target.get("host", "local") if target.get("kind") == "docker" else target.get("context", "")
    return {
        "profile": config.get("gpu-deploy:profile", "?"),
        "target": f"{target.get('kind', '?')}:{host}",
    }


def cmd_list(_: argparse.Namespace) -> int:
    summaries = {
        stack: _stack_summary(PROJECT_DIR / f"Pulumi.{stack}.yaml") for stack in list_stacks(PROJECT_DIR)
    }
    width = max([6, *(len(str(info["profile"])) for info in summaries.values())])  # columns line up
    for stack, info in summaries.items():
        print(f"{stack:<10} profile={info['profile']:<{width}} target={info['target']}")
    return EXIT_OK


def cmd_sources(args: argparse.Namespace) -> int:
    """The build contexts the stack reads, one a line; with --check, exit 1 naming those absent."""
    prepare(args.stack, config_file=Path(args.config_file) if args.config_file else None)
    config = load().config
    if config.target.kind != "docker":
        return EXIT_OK
    from stacks.docker_args import build_contexts  # noqa: PLC0415 (only Docker stacks build)

    contexts = build_contexts(config)
    for context in contexts:
        print(context)
    missing = [c for c in contexts if not (PROJECT_DIR / c).is_dir()]
    if args.check and missing:
        raise PlanError(
            f"stack {args.stack} builds from {', '.join(missing)}: not checked out beside this project"
        )
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    """Before -> after: STACK's own file -> OTHER, or the repository at GIT_REF -> the working tree."""
    stack: str = args.stack
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    if args.config_file:
        before = run_plan(stack, None, preview=False).as_json()
        after = run_plan(stack, Path(args.config_file), preview=False).as_json()
    else:
        before = plan_at(PROJECT_DIR, args.against, stack)
        here = (PROJECT_DIR / f"Pulumi.{stack}.yaml").is_file()
        after = run_plan(stack, None, preview=False).as_json() if here else None
        if before is None and after is None:
            raise PlanError(f"no stack {stack} at {args.against} nor in the working tree")
    diff = diff_plans(before or empty_plan(stack), after or empty_plan(stack), stack)
    print(json.dumps(diff.as_json(), indent=2, sort_keys=True) if args.json else render_text(diff))
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    """Every Kubernetes object of the plan as DIR/<kind>-<name>.yaml (Helm releases: DIR/helm/)."""
    from stacks import render  # noqa: PLC0415 (only this command needs it)

    config_file = Path(args.config_file) if args.config_file else None
    rendered = render.render(run_plan(args.stack, config_file, preview=False))
    for path in render.write(rendered, Path(args.out)):
        print(path)
    for note in rendered.notes:
        print(f"note: {note}", file=sys.stderr)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m stacks", description="gpu-deploy offline tools")
    sub = top.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="what `pulumi up` would create, offline (no CLI, host or cloud)")
    plan.add_argument("stack")
    plan.add_argument("--config-file", help="a stack config file instead of Pulumi.STACK.yaml")
    plan.add_argument("--json", action="store_true", help="one JSON object on stdout")
    plan.add_argument("--preview", action="store_true", help="run as a preview (values unknown until deploy)")
    plan.set_defaults(func=cmd_plan)
    listing = sub.add_parser("list", help="each stack with its profile and target")
    listing.set_defaults(func=cmd_list)
    sources = sub.add_parser("sources", help="the build contexts a stack reads (checked out beside this one)")
    sources.add_argument("stack")
    sources.add_argument("--config-file", help="a stack config file instead of Pulumi.STACK.yaml")
    sources.add_argument("--check", action="store_true", help="exit 1 when a context is not checked out")
    sources.set_defaults(func=cmd_sources)
    diff = sub.add_parser("diff", help="what a change would create, replace, update or delete, offline")
    diff.add_argument("stack")
    other = diff.add_mutually_exclusive_group(required=True)
    other.add_argument("--config-file", help="after: this stack config file (before: Pulumi.STACK.yaml)")
    other.add_argument("--against", metavar="GIT_REF", help="before: the repository at GIT_REF")
    diff.add_argument("--json", action="store_true", help="one JSON object on stdout")
    diff.set_defaults(func=cmd_diff)
    render = sub.add_parser("render", help="the Kubernetes objects a kubernetes stack applies, as YAML files")
    render.add_argument("stack")
    render.add_argument("--out", required=True, help="directory for <kind>-<name>.yaml (new or empty)")
    render.add_argument("--config-file", help="a stack config file instead of Pulumi.STACK.yaml")
    render.set_defaults(func=cmd_render)
    add_host_parsers(sub)  # tunnel, status, logs: stacks/host_cli.py
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except BrokenPipeError:  # the reader stopped early (`| head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (ConfigError, DiffConfigError) as err:  # a diff's config error comes from either plan
        print(str(err), file=sys.stderr)
        return EXIT_CONFIG
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
