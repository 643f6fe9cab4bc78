"""Static check: every torch.load in the sources passes weights_only=True."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("lite_boost/**/*.py"), *ROOT.glob("tests/*.py"),
                  *ROOT.glob("benchmarks/*.py")])


def torch_load_calls(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"):
            yield node


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_torch_load_weights_only(path):
    for call in torch_load_calls(path):
        keywords = {k.arg: k.value for k in call.keywords}
        assert "weights_only" in keywords, f"{path}:{call.lineno}"
        value = keywords["weights_only"]
        assert isinstance(value, ast.Constant) and value.value is True, \
            f"{path}:{call.lineno}"


def test_sources_found():
    assert len(SOURCES) > 20
