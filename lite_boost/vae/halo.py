"""Point-to-point row exchange between ranks that own horizontal slabs of a frame.

In the spatial VAE mode, active rank ``i`` of the group owns slab ``i``: a
contiguous band of rows of every feature map, in rank order from the top. A
convolution with a kernel taller than one row needs rows of the slabs above
and below it (the halo), and the middle attention block needs the keys and
values of every slab. ``RowExchange`` moves those rows with ``isend``/``irecv``
between the active ranks only, so ranks without a slab take no part.

Every tensor sent or received is contiguous, as HCCL requires.
"""

import dataclasses
from typing import List, Optional

import torch
import torch.distributed as dist

from ..ops.collectives import run_collective

# Dimension of the rows in every tensor handed to pad_rows: [..., H, W].
ROW_DIM = -2


def point_to_point_exchange(operations: List[dist.P2POp]) -> None:
    """Post every send and receive of ``operations`` and wait for all of them."""
    # NOTE: run on gloo only. NCCL and HCCL (torch_npu) also implement
    # batch_isend_irecv, but this path has not run on them yet.
    for request in dist.batch_isend_irecv(operations):
        request.wait()


@dataclasses.dataclass(frozen=True)
class RowExchange:
    """This rank's place among the active ranks of a spatial encode or decode.

    Attributes:
        group: the process group; None when a single rank computes.
        index: this rank's slab, counted from the top of the frame. Slab ``i``
            is computed by rank ``i`` of ``group``.
        num_active: number of slabs; ranks ``num_active`` and above of
            ``group`` compute nothing.
    """

    group: Optional[dist.ProcessGroup]
    index: int
    num_active: int

    @property
    def has_above(self) -> bool:
        return self.index > 0

    @property
    def has_below(self) -> bool:
        return self.index < self.num_active - 1

    def _global_rank(self, index: int) -> int:
        return dist.get_global_rank(self.group, index)

    def _exchange(self, operations: List[dist.P2POp], issuer: str) -> None:
        if operations:
            run_collective(point_to_point_exchange, issuer, operations)

    def pad_rows(self, x: torch.Tensor, top: int, bottom: int,
                 issuer: str) -> torch.Tensor:
        """Extend ``x`` by ``top`` rows above and ``bottom`` rows below.

        The rows come from the neighbouring slabs, or are zeros at the top and
        bottom edges of the frame, which is what the layer's own zero padding
        puts there. Every active rank must call this for the same layer with
        the same ``top`` and ``bottom``.

        ``[..., h, W] -> [..., top + h + bottom, W]``
        """
        height = x.shape[ROW_DIM]
        needed = max(top if self.has_below else 0,
                     bottom if self.has_above else 0)
        if height < needed:
            raise RuntimeError(
                f"{issuer}: slab {self.index} has {height} rows, fewer than "
                f"the {needed} halo rows its neighbours need. The row split "
                "should prevent this: please report it with the input shape")

        operations = []
        from_above = from_below = None
        if self.has_above and top > 0:
            from_above = x.new_empty(_with_rows(x, top))
            operations.append(dist.P2POp(
                dist.irecv, from_above, self._global_rank(self.index - 1),
                self.group))
        if self.has_above and bottom > 0:
            # The slab above pads its bottom with this slab's first rows.
            operations.append(dist.P2POp(
                dist.isend, x.narrow(ROW_DIM, 0, bottom).contiguous(),
                self._global_rank(self.index - 1), self.group))
        if self.has_below and bottom > 0:
            from_below = x.new_empty(_with_rows(x, bottom))
            operations.append(dist.P2POp(
                dist.irecv, from_below, self._global_rank(self.index + 1),
                self.group))
        if self.has_below and top > 0:
            # The slab below pads its top with this slab's last rows.
            operations.append(dist.P2POp(
                dist.isend, x.narrow(ROW_DIM, height - top, top).contiguous(),
                self._global_rank(self.index + 1), self.group))
        self._exchange(operations, issuer)

        if from_above is None:
            from_above = x.new_zeros(_with_rows(x, top))
        if from_below is None:
            from_below = x.new_zeros(_with_rows(x, bottom))
        return torch.cat([from_above, x, from_below], dim=ROW_DIM)

    def all_gather_slabs(self, x: torch.Tensor, dim: int,
                         issuer: str) -> torch.Tensor:
        """Concatenate every active rank's ``x`` along ``dim``, in slab order.

        The slabs may differ in size along ``dim``, so the sizes are exchanged
        first. All other dimensions must be equal on every active rank.

        ``[..., n_i, ...] -> [..., n_0 + ... + n_{k-1}, ...]`` for ``k``
        active ranks.
        """
        if self.num_active == 1:
            return x
        local = x.movedim(dim, 0).contiguous()  # [n_i, ...]
        peers = [i for i in range(self.num_active) if i != self.index]

        size = torch.tensor([local.shape[0]], dtype=torch.int64,
                            device=x.device)
        sizes = {i: torch.empty_like(size) for i in peers}
        operations = []
        for i in peers:
            operations.append(dist.P2POp(dist.isend, size,
                                         self._global_rank(i), self.group))
            operations.append(dist.P2POp(dist.irecv, sizes[i],
                                         self._global_rank(i), self.group))
        self._exchange(operations, f"{issuer} (slab sizes)")

        pieces = {self.index: local}
        operations = []
        for i in peers:
            pieces[i] = local.new_empty((int(sizes[i].item()),
                                         *local.shape[1:]))
            operations.append(dist.P2POp(dist.isend, local,
                                         self._global_rank(i), self.group))
            operations.append(dist.P2POp(dist.irecv, pieces[i],
                                         self._global_rank(i), self.group))
        self._exchange(operations, issuer)

        gathered = torch.cat([pieces[i] for i in range(self.num_active)])
        return gathered.movedim(0, dim)


def _with_rows(x: torch.Tensor, rows: int) -> torch.Size:
    shape = list(x.shape)
    shape[ROW_DIM] = rows
    return torch.Size(shape)
