"""Read what lite_boost did to a pipeline: code, diffs, node tables, byte counts.

``lite_boost.inspect(target)`` returns an ``InspectionReport``;
``report.write(directory)`` and ``LITE_BOOST_DUMP_DIR`` write it as files.
"""

from .dump import write_dump
from .graph_report import GraphReport, NodeChange
from .report import InspectionReport, ModelReport, inspect

__all__ = ["GraphReport", "InspectionReport", "ModelReport", "NodeChange", "inspect",
           "write_dump"]
