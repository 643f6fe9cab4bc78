"""Read what lite_boost did to a model: the graphs before and after the passes.

Example::

    from lite_boost.debug import rewritten_graph, rewritten_graphs
    print(list(rewritten_graphs(pipe.model)))          # ['blocks.0.self_attn', ...]
    print(rewritten_graph(pipe.model, "blocks.0.self_attn").code)
"""

from typing import Dict

import torch
import torch.fx as fx

from .model.dit import PATCH_ATTRIBUTE


def _patch_of(model: torch.nn.Module):
    patch = vars(model).get(PATCH_ATTRIBUTE)
    if patch is None:
        raise ValueError(
            f"{type(model).__name__} is not patched by lite_boost; call "
            "ParallelManager() on it (or on its pipeline) first")
    return patch


def rewritten_graphs(model: torch.nn.Module) -> Dict[str, fx.GraphModule]:
    """Return module name -> rewritten GraphModule for a patched WanModel."""
    return dict(_patch_of(model).graphs)


def traced_graphs(model: torch.nn.Module) -> Dict[str, fx.GraphModule]:
    """Return module name -> the graph as traced, before any pass ran."""
    return dict(_patch_of(model).originals)


def rewritten_graph(model: torch.nn.Module, name: str) -> fx.GraphModule:
    """Return the rewritten GraphModule of one module, e.g. "blocks.0.self_attn"."""
    graphs = _patch_of(model).graphs
    if name not in graphs:
        raise KeyError(
            f"{name!r} has no rewritten graph; valid names: "
            f"{', '.join(list(graphs)[:4])}, ...")
    return graphs[name]
