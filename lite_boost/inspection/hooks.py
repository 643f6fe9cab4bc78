"""Inspection set-up at patch time: costs, first-call recording, logs, dumps.

``after_patch`` runs once per patched target, on every rank, right after
``apply_adapter`` has patched it:

- it attaches the communication cost to every rewritten graph
  (``CommunicationCostPass``);
- it installs a ``FirstCallRecorder`` on every patched WanModel. After the
  model's first forward, one INFO record summarizes the model (counts,
  padding, bytes per forward) and DEBUG records give each distinct graph's code;
- with ``LITE_BOOST_DUMP_DIR`` set, it writes the dump at once and again
  after each model's first forward, when the shapes are known;
- with ``LITE_BOOST_LOG`` set (debug, info, warning, error), it sets the
  level of the "lite_boost" logger, and adds a stderr handler to it when
  neither that logger nor the root logger has one.
"""

import collections
import logging
import os
import weakref
from typing import Dict, Optional

import torch

from ..model.dit import PATCH_ATTRIBUTE
from ..passes.communication_cost import CommunicationCostPass
from .dump import choose_destination, write_files
from .first_call import FirstCallRecorder, install_recorder
from .report import build_model_report, inspect

logger = logging.getLogger(__name__)

DUMP_DIRECTORY_VARIABLE = "LITE_BOOST_DUMP_DIR"
LOG_LEVEL_VARIABLE = "LITE_BOOST_LOG"
LOG_LEVELS = ("debug", "info", "warning", "error")

_logging_configured = False


def configure_logging_from_environment() -> None:
    """Apply ``LITE_BOOST_LOG`` to the "lite_boost" logger, once per process."""
    global _logging_configured
    value = os.environ.get(LOG_LEVEL_VARIABLE)
    if _logging_configured or not value:
        return
    _logging_configured = True
    if value.lower() not in LOG_LEVELS:
        logger.warning("%s=%r is not a log level; valid values: %s", LOG_LEVEL_VARIABLE,
                       value, ", ".join(LOG_LEVELS))
        return

    package_logger = logging.getLogger("lite_boost")
    package_logger.setLevel(value.upper())
    if not package_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)


class DumpSession:
    """The dump of one target, written at patch time and after each first forward.

    The first write decides where this rank writes (see
    ``dump.choose_destination``). Later writes reuse that decision, so no rank
    waits on another inside a forward.
    """

    _UNDECIDED = object()

    def __init__(self, target: object, directory: str):
        self.target = weakref.ref(target)
        self.directory = directory
        self.destination = self._UNDECIDED

    def write(self) -> None:
        target = self.target()
        if target is None:
            return
        report = inspect(target)
        try:
            if self.destination is self._UNDECIDED:
                self.destination = choose_destination(report, self.directory)
            if self.destination is None:
                return
            paths = write_files(report, self.destination)
        except (OSError, ValueError) as error:
            logger.error("could not write the graph dump of %s to %s: %s",
                         report.target_type, self.directory, error)
            return
        logger.info("wrote the graph dump of %s to %s (%d files)", report.target_type,
                    self.destination, len(paths))


def _log_first_forward(label: str, recorder: FirstCallRecorder) -> None:
    if not logger.isEnabledFor(logging.INFO):
        return
    report = build_model_report(label, recorder.model)
    logger.info("%s", report.describe())
    if not logger.isEnabledFor(logging.DEBUG):
        return
    graphs_by_code = collections.defaultdict(list)
    for name, graph in report.graphs.items():
        graphs_by_code[graph.after_code].append(name)
    for code, names in graphs_by_code.items():
        others = f" (same code in {len(names) - 1} more graphs)" if len(names) > 1 else ""
        logger.debug("%s %s%s:\n%s", report.title, names[0], others, code)


def after_patch(target: object, models: Dict[str, torch.nn.Module]) -> None:
    """Set up inspection for a target that ``apply_adapter`` just patched.

    Args:
        target: the pipeline or WanModel that was patched.
        models: pipeline attribute -> patched WanModel ("" for the target itself).
    """
    configure_logging_from_environment()
    cost_pass = CommunicationCostPass()
    for model in models.values():
        for graph_module in vars(model)[PATCH_ATTRIBUTE].graphs.values():
            cost_pass(graph_module)

    directory = os.environ.get(DUMP_DIRECTORY_VARIABLE)
    session: Optional[DumpSession] = DumpSession(target, directory) if directory else None

    for label, model in models.items():
        def on_first_forward(recorder, label=label):
            _log_first_forward(label, recorder)
            if session is not None:
                session.write()

        install_recorder(model, on_first_forward)

    if session is not None:
        session.write()
