"""Provenance that passes record in ``node.meta`` for dumps and tests."""

import torch.fx as fx

# node.meta key under which passes record what they found and what they made.
META_KEY = "lite_boost"


def record_provenance(node: fx.Node, pass_name: str, **info: object) -> None:
    """Record that ``pass_name`` created or rewrote ``node``, with details.

    Example: ``record_provenance(new, "UlyssesAllToAllPass", replaces="v",
    scatter_dim=2, gather_dim=1)``.
    """
    entry = node.meta.setdefault(META_KEY, {})
    entry["pass"] = pass_name
    entry.update(info)


def provenance(node: fx.Node) -> dict:
    return node.meta.get(META_KEY, {})
