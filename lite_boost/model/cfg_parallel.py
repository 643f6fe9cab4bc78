"""CFG parallel: the two guidance branches of a step on two rank groups.

Wan's generate() calls the DiT twice per denoising step with the same latents
and timestep: first with the prompt's context, then with the negative
prompt's. The negative context is the same list object at every step.

``CfgParallelForward`` replaces the model's ``forward`` (an instance
attribute around the class's own ``forward``, so Wan's code runs unchanged):

1. Until it has seen such a pair, every call is computed as usual on all
   ranks. A call with the same latents and timestep as the previous call but
   another context marks that context as the negative one.
2. From then on, a call with another context is the prompt branch: CFG group
   0 computes it, CFG group 1 computes the same call with the negative context,
   and the two outputs are exchanged with one all_gather. The prompt's output
   is returned and the negative one is kept.
3. The next call returns the kept output only when it really is the
   negative branch of that step: same latents (same tensors or equal values),
   same timestep, the negative context, same ``seq_len`` and ``y``.
   Otherwise it is computed as usual.

Every rank receives the same sequence of calls, so every rank takes the same
branch and enters the same collectives.
"""

import dataclasses
import logging
from typing import List, Optional, Sequence

import torch

from ..ops.collectives import all_gather_single
from ..parallel.state import cfg_rank, get_state

logger = logging.getLogger(__name__)


def _same_tensors(first: Optional[Sequence[torch.Tensor]],
                  second: Optional[Sequence[torch.Tensor]]) -> bool:
    if first is None or second is None:
        return first is second
    if isinstance(first, torch.Tensor) or isinstance(second, torch.Tensor):
        return (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)
                and (first is second or (first.shape == second.shape
                                         and torch.equal(first, second))))
    if len(first) != len(second):
        return False
    return all(_same_tensors(a, b) for a, b in zip(first, second))


@dataclasses.dataclass
class _Call:
    x: List[torch.Tensor]
    t: torch.Tensor
    context: List[torch.Tensor]
    seq_len: int
    y: Optional[List[torch.Tensor]]

    def same_step(self, other: "_Call") -> bool:
        """Same latents, timestep, seq_len and y (the context may differ)."""
        return (self.seq_len == other.seq_len and _same_tensors(self.x, other.x)
                and _same_tensors(self.t, other.t) and _same_tensors(self.y, other.y))


class CfgParallelForward:
    """The forward of a WanModel whose guidance branches run on two rank groups."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.negative_context: Optional[List[torch.Tensor]] = None
        self._previous: Optional[_Call] = None
        self._kept_call: Optional[_Call] = None
        self._kept_output: Optional[List[torch.Tensor]] = None
        self.parallel_steps = 0
        self.fallbacks = 0

    def _compute(self, call: _Call) -> List[torch.Tensor]:
        return type(self.model).forward(self.model, call.x, call.t, call.context,
                                        call.seq_len, y=call.y)

    def __call__(self, x, t, context, seq_len, y=None):
        call = _Call(x, t, context, seq_len, y)

        kept_call, kept_output = self._kept_call, self._kept_output
        self._kept_call = self._kept_output = None
        if kept_call is not None:
            if (call.context is self.negative_context
                    or _same_tensors(call.context, self.negative_context)) \
                    and kept_call.same_step(call):
                self._previous = call
                return kept_output
            self.fallbacks += 1
            logger.info("CFG parallel: the call after a prompt branch is not its "
                        "negative branch; computing it without CFG parallel")

        if self.negative_context is not None and call.context is not self.negative_context:
            return self._run_both_branches(call)

        output = self._compute(call)
        previous, self._previous = self._previous, call
        if (self.negative_context is None and previous is not None
                and previous.same_step(call) and previous.context is not call.context):
            self.negative_context = call.context
            logger.info("CFG parallel: found the negative branch; later steps "
                        "run the two branches on the two CFG groups")
        return output

    def _run_both_branches(self, call: _Call) -> List[torch.Tensor]:
        branch = cfg_rank()
        mine = call if branch == 0 else dataclasses.replace(
            call, context=self.negative_context)
        output = self._compute(mine)

        # [C_out, F, H, W] per video -> one flat buffer, gathered over the
        # CFG group: row 0 is the prompt branch, row 1 the negative one.
        flat = torch.cat([u.reshape(-1) for u in output]).contiguous()
        gathered = flat.new_empty(2 * flat.numel())
        all_gather_single(gathered, flat, get_state().cfg_group,
                          issuer="the CFG parallel exchange of the DiT output")
        prompt_flat, negative_flat = gathered.view(2, -1)

        self._kept_call = call
        self._kept_output = _split_like(negative_flat, output)
        self._previous = call
        self.parallel_steps += 1
        return _split_like(prompt_flat, output)


def _split_like(flat: torch.Tensor, like: List[torch.Tensor]) -> List[torch.Tensor]:
    pieces, start = [], 0
    for tensor in like:
        pieces.append(flat[start:start + tensor.numel()].view_as(tensor))
        start += tensor.numel()
    return pieces


def install_cfg_parallel(model: torch.nn.Module) -> CfgParallelForward:
    forward = CfgParallelForward(model)
    model.forward = forward
    return forward


def remove_cfg_parallel(model: torch.nn.Module) -> None:
    if isinstance(vars(model).get("forward"), CfgParallelForward):
        del vars(model)["forward"]
