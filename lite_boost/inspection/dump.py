"""Write an ``InspectionReport`` as files, one folder per graph.

Layout under the dump directory::

    summary.md, summary.json           every patched model and graph
    <model>/<graph>/before.py          the traced graph (print_readable)
    <model>/<graph>/after.py           the rewritten graph, with shapes after
                                       the first forward
    <model>/<graph>/diff.patch         unified diff of the two graphs' code
    <model>/<graph>/graph.svg          picture of the rewritten graph, or
    <model>/<graph>/graph.dot          its DOT text without pydot and Graphviz
    <model>/<graph>/summary.md         node table and communication cost

``<model>`` is the pipeline attribute ("model", "low_noise_model") or the
class name of a WanModel patched by itself. Names are reduced to letters,
digits, ".", "_" and "-", and a path that resolves outside the dump
directory (through a symbolic link, say) raises ValueError before anything
is written there.

Rank 0 writes. Every other rank compares a digest of its graphs' code with
rank 0's and writes the same layout under ``rank<N>/`` only when they
differ. The digests travel through the process group's key-value store, not
through a collective. Rank 0 only sets its digest and never waits. Another
rank waits at most ``RANK_ZERO_TIMEOUT`` for it and then writes its own dump,
so a rank that dumps while rank 0 does not is delayed but never hangs.
"""

import datetime
import hashlib
import json
import logging
import os
import re
from typing import Dict, List, Optional

import torch.distributed as dist

from . import render
from .graph_report import GraphReport, NodeChange
from .report import InspectionReport, ModelReport, format_number

logger = logging.getLogger(__name__)

# How long a rank other than 0 waits for rank 0's digest. Ranks reach
# patching at different times, for example after loading checkpoints at
# different speeds.
RANK_ZERO_TIMEOUT = datetime.timedelta(seconds=120)

_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")

# Dumps written by this process per directory, so that every rank pairs its
# n-th dump into a directory with rank 0's n-th one.
_dumps_per_directory: Dict[str, int] = {}


def safe_name(name: str) -> str:
    """Return ``name`` as one path component: no separator, never "." or ".."."""
    safe = _UNSAFE_CHARACTERS.sub("_", name)
    if safe in ("", ".", ".."):
        safe = safe.replace(".", "_") or "_"
    return safe


def path_inside(root: str, *names: str) -> str:
    """Join sanitized ``names`` under ``root``; raise unless it resolves inside ``root``.

    Raises:
        ValueError: the path leaves ``root``, through a symbolic link for
            example; the message gives both resolved paths.
    """
    path = os.path.join(root, *(safe_name(name) for name in names))
    resolved_root = os.path.realpath(root)
    resolved = os.path.realpath(path)
    if os.path.commonpath([resolved_root, resolved]) != resolved_root:
        raise ValueError(
            f"dump path {path!r} resolves to {resolved!r}, outside the dump "
            f"directory {resolved_root!r}; remove the symbolic link or choose "
            "another directory")
    return path


def code_digest(report: InspectionReport) -> str:
    """Return a SHA-256 digest of every rewritten graph's code, in order."""
    digest = hashlib.sha256()
    for label, model in report.models.items():
        for name, graph in model.graphs.items():
            digest.update(f"{label}/{name}\n{graph.rewritten.code}\n".encode("utf-8"))
    return digest.hexdigest()


def _store_key(directory: str) -> str:
    absolute = os.path.abspath(directory)
    count = _dumps_per_directory.get(absolute, 0)
    _dumps_per_directory[absolute] = count + 1
    directory_id = hashlib.sha256(absolute.encode("utf-8")).hexdigest()[:16]
    return f"lite_boost/dump/{directory_id}/{count}"


def _rank_zero_digest(key: str, rank: int, digest: str) -> Optional[str]:
    """Publish this digest on rank 0; return rank 0's digest on other ranks.

    Returns None when rank 0's digest did not arrive in time.
    """
    store = dist.distributed_c10d._get_default_store()
    if rank == 0:
        store.set(key, digest)
        return digest
    try:
        store.wait([key], RANK_ZERO_TIMEOUT)
    except RuntimeError as error:  # torch.distributed.DistStoreError on timeout
        logger.warning(
            "rank %d: rank 0's graph digest for the dump did not arrive within %s "
            "(%s); is LITE_BOOST_DUMP_DIR set on rank 0? Writing this rank's dump",
            rank, RANK_ZERO_TIMEOUT, error)
        return None
    return store.get(key).decode("utf-8")


def choose_destination(report: InspectionReport, directory: str) -> Optional[str]:
    """Return where this rank writes its dump, or None when it writes nothing."""
    if not dist.is_initialized():
        return directory

    digest = code_digest(report)
    rank_zero = _rank_zero_digest(_store_key(directory), report.rank, digest)
    if report.rank == 0:
        return directory
    if rank_zero == digest:
        logger.debug("rank %d: graphs equal rank 0's, so rank 0's dump covers them",
                     report.rank)
        return None
    os.makedirs(directory, exist_ok=True)
    return path_inside(directory, f"rank{report.rank}")


def _write_text(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as output:
        output.write(text)
    return path


def _graph_summary(model: ModelReport, graph: GraphReport) -> str:
    lines = [f"# {model.title}: {graph.name} ({graph.attention}-attention)", ""]
    if graph.changes:
        lines += ["Nodes the passes inserted or rewrote (shapes of this rank's slice "
                  "at the first forward):", "",
                  render.markdown_table(NodeChange.HEADER,
                                        [change.row() for change in graph.changes])]
    else:
        lines += ["No node was inserted or rewritten.", ""]
    lines += _graph_cost_lines(graph)
    lines += ["", "Node counts: " + ", ".join(
        f"{key} {count}" for key, count in graph.counts.items())]
    lines += [f"WARNING: {text}" for text in graph.warnings]
    return "\n".join(lines) + "\n"


def _graph_cost_lines(graph: GraphReport) -> List[str]:
    if not graph.cost.terms and graph.cost.complete:
        return ["No collective: one call of this graph sends and receives nothing."]
    value = graph.cost_value
    pending = "known after the first forward"
    lines = [
        "Bytes one rank sends per call (it receives as many):", "",
        f"    {graph.cost.bytes_sent} = "
        f"{format_number(value.bytes_sent) if value else pending}", "",
        "Ulysses lower bound:", "",
        f"    {graph.cost.lower_bound} = "
        f"{format_number(value.lower_bound) if value else pending}",
    ]
    for node, reason in graph.cost.unsupported.items():
        lines.append(f"No byte count for {node}: {reason}.")
    return lines


def _summary_markdown(report: InspectionReport, graph_folders: Dict[str, str]) -> str:
    lines = [f"# lite_boost: rewritten graphs of {report.target_type} (rank {report.rank})",
             "", "```text", str(report), "```", ""]
    for label, model in report.models.items():
        lines += [f"## {model.title}", ""]
        rows = []
        for name, graph in model.graphs.items():
            value = graph.cost_value
            rows.append((f"[{name}]({graph_folders[f'{label}/{name}']}/)", graph.attention,
                         graph.counts["total"], graph.all_to_all, str(graph.cost.bytes_sent),
                         format_number(value.bytes_sent) if value else "-"))
        lines.append(render.markdown_table(
            ("graph", "attention", "nodes", "all_to_all", "bytes sent per call",
             "at the first forward"), rows))
    return "\n".join(lines)


def _model_folder(label: str, model: ModelReport) -> str:
    return safe_name(label or model.class_name)


def write_files(report: InspectionReport, destination: str) -> List[str]:
    """Write every file of the layout under ``destination``; return their paths."""
    os.makedirs(destination, exist_ok=True)
    written, graph_folders = [], {}
    for label, model in report.models.items():
        for name, graph in model.graphs.items():
            folder = path_inside(destination, _model_folder(label, model), name)
            os.makedirs(folder, exist_ok=True)
            graph_folders[f"{label}/{name}"] = os.path.relpath(folder, destination)
            written.append(_write_text(path_inside(folder, "before.py"), graph.before_code))
            written.append(_write_text(path_inside(folder, "after.py"), graph.after_code))
            written.append(_write_text(path_inside(folder, "diff.patch"), graph.diff))
            written.append(_write_text(path_inside(folder, "summary.md"),
                                       _graph_summary(model, graph)))
            suffix, picture = render.graph_picture(graph.rewritten, name)
            picture_path = path_inside(folder, "graph" + suffix)
            with open(picture_path, "wb") as output:
                output.write(picture)
            written.append(picture_path)

    summary = _summary_markdown(report, graph_folders)
    written.append(_write_text(path_inside(destination, "summary.md"), summary))
    summary_json = json.dumps(report.to_dict(), indent=2) + "\n"
    written.append(_write_text(path_inside(destination, "summary.json"), summary_json))
    return written


def write_dump(report: InspectionReport, directory: str) -> List[str]:
    """Write this rank's dump of ``report`` under ``directory`` (see the module docstring).

    Returns the paths written, empty on a rank whose graphs equal rank 0's.
    """
    destination = choose_destination(report, directory)
    if destination is None:
        return []
    return write_files(report, destination)
