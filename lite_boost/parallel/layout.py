"""Process groups for (cfg, ulysses, ring) degrees, and changing them.

With C * U * R = P ranks, global rank g sits at cfg index g // (U*R), ring
index (g % (U*R)) // U and Ulysses index g % U. Ulysses groups are therefore
consecutive ranks, which on one node share the fastest links, because
Ulysses moves the most data per layer.
"""

import dataclasses
import logging
from typing import List, Optional, Tuple

import torch.distributed as dist

from . import state as parallel_state

logger = logging.getLogger(__name__)


def complete_degrees(world_size: int, cfg: Optional[int] = None,
                     ulysses: Optional[int] = None,
                     ring: Optional[int] = None) -> Tuple[int, int, int]:
    """Fill in the degrees left as None so that cfg * ulysses * ring = world_size.

    cfg defaults to 1; of ulysses and ring, the one left out takes what remains
    (ring defaults to 1 when both are left out).

    Raises:
        ValueError: a degree is not a positive integer or the product differs
            from the world size.
    """
    for name, value in (("cfg_degree", cfg), ("ulysses_degree", ulysses),
                        ("ring_degree", ring)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}={value!r} is invalid: it must be a positive integer")
    if cfg is not None and cfg not in (1, 2):
        raise ValueError(f"cfg_degree={cfg} is invalid; valid choices: 1, 2 "
                         "(the prompt and the negative prompt)")
    cfg = cfg or 1
    if ulysses is None and ring is None:
        ring = 1
    remaining = world_size // cfg if world_size % cfg == 0 else None
    if ulysses is None and remaining is not None and remaining % ring == 0:
        ulysses = remaining // ring
    if ring is None and remaining is not None and remaining % ulysses == 0:
        ring = remaining // ulysses
    if ulysses is None or ring is None or cfg * ulysses * ring != world_size:
        raise ValueError(
            f"degrees cfg={cfg}, ulysses={ulysses}, ring={ring} do not multiply "
            f"to the world size {world_size}; choose degrees whose product is "
            f"{world_size}, for example {valid_products(world_size)}")
    return cfg, ulysses, ring


def valid_products(world_size: int) -> List[str]:
    return [f"(cfg={c}, ulysses={u}, ring={world_size // (c * u)})"
            for c in (1, 2) if world_size % c == 0
            for u in range(1, world_size // c + 1) if (world_size // c) % u == 0]


def _member_group(groups_ranks: List[List[int]], rank: int,
                  world_size: int) -> Optional[dist.ProcessGroup]:
    """Create every group (all ranks must), return the one containing ``rank``."""
    mine = None
    for ranks in groups_ranks:
        if len(ranks) == 1:
            continue
        if len(ranks) == world_size:
            group = dist.group.WORLD
        else:
            # dist.new_group must be entered by every rank, member or not.
            group = dist.new_group(ranks)
        if rank in ranks:
            mine = group
    return mine


# (world_size, cfg, ulysses, ring) -> this rank's groups. Groups stay valid
# while the default process group lives; destroy_usp() clears the cache.
_group_cache: dict = {}


def clear_group_cache() -> None:
    _group_cache.clear()


def build_groups(world_size: int, rank: int, cfg: int, ulysses: int,
                 ring: int) -> dict:
    """Create the groups of the layout; return this rank's groups by field name.

    Each layout's groups are created once per process: every rank reaches the
    same cache state, because every rank configures the same layouts in the
    same order.
    """
    key = (world_size, cfg, ulysses, ring)
    if key not in _group_cache:
        _group_cache[key] = _create_groups(world_size, rank, cfg, ulysses, ring)
    return dict(_group_cache[key])


def _create_groups(world_size: int, rank: int, cfg: int, ulysses: int,
                   ring: int) -> dict:
    if world_size == 1:
        return dict(ulysses_group=None, ring_group=None, cfg_group=None,
                    sequence_group=None, world_group=None)
    sequence = ulysses * ring
    ulysses_ranks = [[c * sequence + r * ulysses + u for u in range(ulysses)]
                     for c in range(cfg) for r in range(ring)]
    ring_ranks = [[c * sequence + r * ulysses + u for r in range(ring)]
                  for c in range(cfg) for u in range(ulysses)]
    sequence_ranks = [[c * sequence + s for s in range(sequence)] for c in range(cfg)]
    cfg_ranks = [[c * sequence + s for c in range(cfg)] for s in range(sequence)]
    return dict(
        ulysses_group=_member_group(ulysses_ranks, rank, world_size),
        ring_group=_member_group(ring_ranks, rank, world_size),
        sequence_group=_member_group(sequence_ranks, rank, world_size),
        cfg_group=_member_group(cfg_ranks, rank, world_size),
        world_group=dist.group.WORLD)


def configure_degrees(cfg: Optional[int] = None, ulysses: Optional[int] = None,
                      ring: Optional[int] = None, *, reason: Optional[str] = None,
                      fixed: bool = True) -> parallel_state.ParallelState:
    """Set the (cfg, ulysses, ring) degrees and create their process groups.

    Every rank must call it with the same degrees, because creating a process
    group is a collective. Models patched earlier keep reading the state at
    run time, so patch models after changing the degrees.

    Args:
        cfg, ulysses, ring: degrees; left-out ones are completed by
            ``complete_degrees``.
        reason: why these degrees, kept for the log and the report.
        fixed: whether the caller chose them (the planner then only checks).
    """
    current = parallel_state.get_state()
    degrees = complete_degrees(current.world_size, cfg, ulysses, ring)
    groups = build_groups(current.world_size, current.rank, *degrees)
    new = dataclasses.replace(
        current, cfg_degree=degrees[0], ulysses_degree=degrees[1],
        ring_degree=degrees[2], degrees_fixed=fixed,
        plan_reason=reason or "chosen by the caller", **groups)
    parallel_state.set_state(new)
    logger.info("lite_boost degrees: cfg %d, ulysses %d, ring %d (%s)",
                *degrees, new.plan_reason)
    return new
