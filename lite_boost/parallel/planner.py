"""Choose (cfg, ulysses, ring) degrees for a model on P ranks.

Ulysses splits heads, so its degree must divide the head count. Ring attention
splits the sequence without that limit but passes keys and values around the
ring in R - 1 steps per layer. CFG parallel runs the prompt and the negative
prompt on two halves of the ranks and exchanges only the DiT's output once per
denoising step.

The planner:

1. lists every (cfg, ulysses, ring) whose product is P, with ``ulysses``
   dividing the head count and ``cfg`` 2 only when guidance is on;
2. prefers plans without ring when any exists, and among them the one with
   the fewest bytes sent per rank per denoising step (``step_cost``);
3. otherwise prefers CFG before ring, then the smallest ring degree.

``step_cost`` is a sympy expression of the bytes one rank sends per denoising
step for each self-attention layer. Its Ulysses term follows the counting of
``lite_boost.passes.communication_cost``: an all_to_all of N elements over U
ranks sends (U - 1)/U * N elements.
"""

import dataclasses
from typing import List, Optional

import sympy

# Symbols of the per-step cost, in elements (multiply by bytes per element).
BATCH, SEQUENCE, HEADS, HEAD_SIZE = sympy.symbols("B S H D", positive=True)
CFG, ULYSSES, RING = sympy.symbols("C U R", positive=True, integer=True)
LAYERS = sympy.Symbol("L", positive=True, integer=True)
OUTPUT_CHANNELS = sympy.Symbol("C_out", positive=True)


def step_cost_expression(guidance: bool) -> sympy.Expr:
    """Return the elements one rank sends per denoising step, for all layers.

    Per forward and layer, with T = B*S*H*D elements of one full q:
    - Ulysses: q, k, v and the output, each T/(U*R) elements per rank, of which
      (U - 1)/U leave the rank: 4 * T/(U*R) * (U - 1)/U.
    - Ring: R - 1 hops of the local k and v block, 2 * T/(U*R) each.
    Forwards per rank and step: 2 with guidance and C = 1, else 1. CFG adds
    one exchange of the DiT output, B*S*C_out/(U*R) elements, per step.
    """
    local = BATCH * SEQUENCE * HEADS * HEAD_SIZE / (ULYSSES * RING)
    per_layer = 4 * local * (ULYSSES - 1) / ULYSSES + 2 * local * (RING - 1)
    forwards = 2 / CFG if guidance else 1
    cfg_exchange = (CFG - 1) * BATCH * SEQUENCE * OUTPUT_CHANNELS / (ULYSSES * RING)
    return forwards * LAYERS * per_layer + cfg_exchange


@dataclasses.dataclass(frozen=True)
class DegreePlan:
    """Degrees whose product is the world size, and why they were chosen.

    Attributes:
        cfg: 1, or 2 to run the two guidance branches on two rank groups.
        ulysses: ranks that split heads (all_to_all).
        ring: ranks that pass keys and values around a ring.
        reason: one sentence for the inspection report and the log.
        cost: elements sent per rank per denoising step, by ``step_cost``, at
            the reference shapes; None when the degrees were given by the user.
    """

    cfg: int
    ulysses: int
    ring: int
    reason: str
    cost: Optional[float] = None

    @property
    def degrees(self) -> tuple:
        return (self.cfg, self.ulysses, self.ring)


# Shapes at which candidates are compared: Wan2.2 at 720p and 81 frames
# (75600 tokens, 40 layers, head dim 128). The ranking depends only weakly on
# them, because every term scales with the same B*S*H*D.
REFERENCE_SHAPES = {BATCH: 1, SEQUENCE: 75600, HEAD_SIZE: 128, LAYERS: 40,
                    OUTPUT_CHANNELS: 48}


def candidate_degrees(num_heads: int, world_size: int, guidance: bool) -> List[tuple]:
    """List every (cfg, ulysses, ring) with product ``world_size`` that can run."""
    cfg_choices = [1, 2] if guidance and world_size % 2 == 0 else [1]
    candidates = []
    for cfg in cfg_choices:
        for ulysses in range(1, world_size // cfg + 1):
            if (world_size // cfg) % ulysses or num_heads % ulysses:
                continue
            candidates.append((cfg, ulysses, world_size // (cfg * ulysses)))
    return candidates


def step_cost(degrees: tuple, num_heads: int, guidance: bool) -> float:
    cfg, ulysses, ring = degrees
    shapes = dict(REFERENCE_SHAPES)
    shapes.update({HEADS: num_heads, CFG: cfg, ULYSSES: ulysses, RING: ring})
    return float(step_cost_expression(guidance).subs(shapes))


def plan_degrees(num_heads: int, world_size: int, guidance: bool) -> DegreePlan:
    """Choose degrees for ``num_heads`` heads on ``world_size`` ranks.

    Example: 24 heads on 16 ranks with guidance gives cfg 2, ulysses 8, ring
    1, because Ulysses alone cannot use 16 ranks (16 does not divide 24).
    """
    if world_size < 1 or num_heads < 1:
        raise ValueError(
            f"num_heads={num_heads} and world_size={world_size} must be >= 1")
    candidates = candidate_degrees(num_heads, world_size, guidance)
    without_ring = [c for c in candidates if c[2] == 1]
    if without_ring:
        best = min(without_ring, key=lambda c: (step_cost(c, num_heads, guidance), -c[1]))
        reason = (f"no ring needed: {num_heads} heads divide by ulysses "
                  f"{best[1]}; lowest bytes per step among plans without ring")
    else:
        # CFG first, then the fewest ring steps (the largest Ulysses degree).
        best = min(candidates, key=lambda c: (-c[0], c[2]))
        reason = (f"{num_heads} heads do not divide by {world_size // best[0]}; "
                  f"largest ulysses degree {best[1]} that divides them, "
                  f"{'CFG parallel, ' if best[0] == 2 else ''}ring {best[2]} for "
                  "the rest")
    return DegreePlan(*best, reason=reason,
                      cost=step_cost(best, num_heads, guidance))


def check_degrees(num_heads: int, world_size: int, guidance: bool,
                  cfg: int, ulysses: int, ring: int) -> None:
    """Raise ValueError when the given degrees cannot run, listing valid ones."""
    valid = candidate_degrees(num_heads, world_size, guidance)
    if (cfg, ulysses, ring) in valid:
        return
    listed = ", ".join(f"(cfg={c}, ulysses={u}, ring={r})" for c, u, r in valid)
    raise ValueError(
        f"degrees cfg={cfg}, ulysses={ulysses}, ring={ring} cannot run "
        f"{num_heads} heads on {world_size} ranks "
        f"(guidance {'on' if guidance else 'off'}): the product must be the "
        f"world size, ulysses must divide the heads and cfg=2 needs guidance; "
        f"valid choices: {listed}")
