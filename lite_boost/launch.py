"""Run a function on N local ranks through torchrun's launcher API.

The demo, the tests and the benchmarks start their ranks here, with
``torch.distributed.launcher.api.elastic_launch`` (the launcher behind
torchrun) on 127.0.0.1. Users scale out with torchrun itself.
"""

import os
import socket
import uuid
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.distributed.launcher.api import LaunchConfig, elastic_launch


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_entry(fn: Callable, threads: int, init_kwargs: Dict[str, Any],
                args: tuple) -> Any:
    from lite_boost.parallel import destroy_usp, initialize_usp

    torch.set_num_threads(threads)
    initialize_usp(**init_kwargs)
    try:
        return fn(*args)
    finally:
        destroy_usp()


def run_on_ranks(
    fn: Callable,
    nprocs: int,
    *args: Any,
    threads_per_rank: int = 1,
    init_kwargs: Optional[Dict[str, Any]] = None,
    env: Optional[Dict[str, str]] = None,
) -> List[Any]:
    """Run ``fn(*args)`` on ``nprocs`` ranks after ``initialize_usp()``.

    ``fn`` must be importable by name (a module-level function), because each
    rank is a spawned process. Every rank gets one thread by default, so that
    ranks do not compete for the same cores.

    Returns:
        The return values of ``fn``, indexed by rank.

    Raises:
        torch.distributed.elastic.multiprocessing.errors.ChildFailedError: a
            rank raised; the message contains that rank's traceback.
    """
    if nprocs < 1:
        raise ValueError(f"nprocs={nprocs} is invalid: it must be >= 1")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nprocs,
        run_id=f"lite_boost_{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_loopback_port()}",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
        local_addr="127.0.0.1",
    )
    saved_env = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        results = elastic_launch(config, _rank_entry)(
            fn, threads_per_rank, dict(init_kwargs or {}), args)
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return [results[rank] for rank in range(nprocs)]
