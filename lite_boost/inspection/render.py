"""Text forms of a graph: readable code, a unified diff, node tables and a picture."""

import difflib
import importlib.util
import re
import shutil
from typing import List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch.fx.graph import dtype_abbrs

from ..passes.meta import META_KEY
from .first_call import tensor_meta

# The comment print_readable() writes above nodes that have no stack trace,
# which is every node of a symbolically traced graph.
_NO_STACK_TRACE = "# No stacktrace found for following nodes"

# fx frees each value after its last use with a trailing `;  a = b = None`.
_FREE_VALUES = re.compile(r";  (?:\w+ = )+None$")


def format_tensor_meta(node: Optional[object]) -> str:
    """Return ``"f32[1, 23, 12, 16]"`` for a node with recorded ``tensor_meta``, else ""."""
    if not isinstance(node, fx.Node):
        return ""
    meta = tensor_meta(node)
    if meta is None:
        return ""
    dtype = dtype_abbrs.get(meta.dtype, str(meta.dtype))
    return f"{dtype}[{', '.join(str(size) for size in meta.shape)}]"


def readable_code(graph_module: fx.GraphModule) -> str:
    """Return ``print_readable`` text with shapes, dtypes and provenance comments.

    Shapes and dtypes appear on nodes that carry ``tensor_meta``, and every
    node a pass made or rewrote gets a ``# lite_boost: {...}`` comment.
    """
    text = graph_module.print_readable(print_output=False, additional_meta=[META_KEY])
    lines = []
    for line in text.splitlines():
        if line.strip() == _NO_STACK_TRACE:
            continue
        lines.append(line.replace(" " + _NO_STACK_TRACE, "").rstrip())
    return "\n".join(lines) + "\n"


def _code_lines(graph_module: fx.GraphModule) -> List[str]:
    lines = []
    for line in graph_module.code.splitlines():
        if line.strip():
            lines.append(_FREE_VALUES.sub("", line.rstrip()))
    return lines


def unified_diff(before: fx.GraphModule, after: fx.GraphModule, name: str) -> str:
    """Return a unified diff of the generated code of two graphs.

    The code is ``GraphModule.code`` without fx's trailing ``x = None``
    statements, which only free values early and would make most lines differ.
    """
    diff = difflib.unified_diff(
        _code_lines(before), _code_lines(after),
        fromfile=f"{name} (traced)", tofile=f"{name} (rewritten)", lineterm="")
    return "\n".join(diff) + "\n"


def table_lines(header: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    """Lay out a plain-text table with columns padded to their widest cell."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def escape(cell: object) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(escape(cell) for cell in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_label(node: fx.Node) -> str:
    if node.op == "call_function":
        target = getattr(node.target, "__name__", str(node.target))
    else:
        target = str(node.target)
    if node.op in ("placeholder", "output"):
        lines = [node.name, node.op]
    else:
        lines = [node.name, f"{node.op} {target}"]
    shape = format_tensor_meta(node)
    if shape:
        lines.append(shape)
    return "\n".join(lines)


def dot_source(graph_module: fx.GraphModule, name: str) -> str:
    """Return Graphviz DOT text of the graph; nodes made by a pass are filled."""
    lines = [f"digraph {_dot_quote(name)} {{",
             '  node [shape=box, fontname="monospace", fontsize=10];']
    for node in graph_module.graph.nodes:
        style = ""
        if node.meta.get(META_KEY, {}).get("pass"):
            style = ', style=filled, fillcolor="#ffd59e"'
        lines.append(f"  {_dot_quote(node.name)} [label={_dot_quote(_dot_label(node))}{style}];")
    for node in graph_module.graph.nodes:
        for source in node.all_input_nodes:
            lines.append(f"  {_dot_quote(source.name)} -> {_dot_quote(node.name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_picture(graph_module: fx.GraphModule, name: str) -> Tuple[str, bytes]:
    """Return ``(suffix, content)`` of a picture of the graph.

    An SVG drawn by ``torch.fx.passes.graph_drawer.FxGraphDrawer`` when pydot
    and Graphviz's ``dot`` program are installed, DOT text otherwise.
    """
    if importlib.util.find_spec("pydot") is not None and shutil.which("dot"):
        from torch.fx.passes.graph_drawer import FxGraphDrawer

        drawer = FxGraphDrawer(graph_module, name)
        return ".svg", drawer.get_dot_graph().create_svg()
    return ".dot", dot_source(graph_module, name).encode("utf-8")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
