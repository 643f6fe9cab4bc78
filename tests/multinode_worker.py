"""One rank of the two-node test, started by torchrun (``--nnodes 2``).

Usage: torchrun --nnodes 2 --node-rank K ... multinode_worker.py OUTPUT_DIR
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

import lite_boost  # noqa: E402,F401
from dit_cases import CASES, build_model, run_model  # noqa: E402
from lite_boost.parallel import ParallelManager, destroy_usp, initialize_usp  # noqa: E402


def main(output_dir: str) -> None:
    torch.set_num_threads(1)
    state = initialize_usp(timeout=120)
    case = CASES[0]
    output = run_model(ParallelManager(build_model(case)), case)
    record = {"output": output, "rank": state.rank, "local_rank": state.local_rank,
              "world_size": state.world_size,
              "env_local_rank": int(os.environ["LOCAL_RANK"])}
    torch.save(record, os.path.join(output_dir, f"rank{state.rank}.pt"))
    destroy_usp()


if __name__ == "__main__":
    main(sys.argv[1])
