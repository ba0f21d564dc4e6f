"""Resource options for a component's children."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi


def child_options(
    parent: pulumi.Resource,
    opts: pulumi.ResourceOptions | None,
    *,
    after: Sequence[pulumi.Resource] = (),
    **options: Any,
) -> pulumi.ResourceOptions:
    """Parented to the component and waiting for whatever the component was told to wait for.

    Pulumi does not pass a component's `depends_on` down to its children, so without this a container
    would not wait for the host directories or the migration its component depends on.
    """
    inherited = opts.depends_on if opts is not None else None
    if inherited is None:
        waits: list[Any] = []
    elif isinstance(inherited, pulumi.Resource):
        waits = [inherited]
    else:
        waits = list(inherited)  # type: ignore[arg-type]
    return pulumi.ResourceOptions(parent=parent, depends_on=[*waits, *after], **options)
