"""lite_boost.inspect on one process: messages, counts, first-call shapes, cost model, dumps."""

import datetime
import logging
import os

import pytest
import sympy
import torch
import torch.distributed as dist
from torch.fx.passes.shape_prop import _extract_tensor_metadata

import lite_boost
from dit_cases import CASES, build_model, run_model
from lite_boost.debug import rewritten_graph, rewritten_graphs
from lite_boost.inspection import dump, hooks
from lite_boost.inspection.first_call import RECORDER_ATTRIBUTE
from lite_boost.inspection.graph_report import build_graph_report
from lite_boost.inspection.render import dot_source, graph_picture
from lite_boost.ops.attention import sdpa_attention
from lite_boost.ops.collectives import ulysses_all_to_all
from lite_boost.parallel import ParallelManager
from lite_boost.passes import attention_passes, run_passes, trace_attention
from lite_boost.passes import communication_cost as cost_model
from lite_boost.passes.communication_cost import CommunicationCostPass, analyze_communication
from reference import wan_reference_attention

CASE = CASES[1]  # t2v, 12 heads of 16, 45 tokens padded by Wan to 47


def rewritten_self_attention(degree):
    block = build_model(CASE).blocks[0]
    traced = trace_attention(block.self_attn)
    rewritten = trace_attention(block.self_attn)
    run_passes(rewritten, attention_passes(degree, sdpa_attention))
    return traced, rewritten


def real_node_counts(graph_module):
    counts = {"total": 0}
    for node in graph_module.graph.nodes:
        counts["total"] += 1
        counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def test_unpatched_model_message():
    report = lite_boost.inspect(build_model(CASE))
    assert not report.patched
    assert report.models == {}
    assert "not patched by lite_boost" in str(report)
    assert "ParallelManager()" in str(report)


@pytest.mark.parametrize("target", [object(), None, "a string", torch.nn.Linear(2, 2)])
def test_unsupported_object_message(target):
    report = lite_boost.inspect(target)
    assert not report.patched
    assert "nothing to inspect" in str(report)
    assert "WanTI2V, WanT2V, WanI2V, WanModel" in str(report)


def test_restored_model_message(single_process):
    model = ParallelManager(build_model(CASE))
    lite_boost.restore(model)
    report = lite_boost.inspect(model)
    assert not report.patched
    assert "not patched by lite_boost" in str(report)


def test_report_before_first_forward(single_process):
    model = ParallelManager(build_model(CASE))
    report = lite_boost.inspect(model)
    text = str(report)
    assert text.startswith("WanModel: 2 blocks, 0 self-attention rewritten")
    assert "first forward: not yet run" in text
    assert report.models[""].first_call is None
    graph = report.graph("blocks.0.self_attn")
    assert graph.cost_value is None
    assert not graph.shapes_recorded


def test_counts_equal_graph_nodes(single_process):
    model = ParallelManager(build_model(CASE))
    model_report = lite_boost.inspect(model).models[""]
    graphs = rewritten_graphs(model)
    assert list(model_report.graphs) == list(graphs)
    for name, graph_module in graphs.items():
        counts = model_report.graphs[name].counts
        for key, value in real_node_counts(graph_module).items():
            assert counts[key] == value, (name, key)
        kernels = sum(node.target is sdpa_attention for node in graph_module.graph.nodes)
        assert counts["call_function:sdpa_attention"] == kernels
        assert model_report.graphs[name].all_to_all == 0
    assert model_report.all_to_all_per_forward == 0
    assert model_report.padding_tokens == 0


def test_first_forward_records_shapes(single_process):
    model = ParallelManager(build_model(CASE))
    first_output = run_model(model, CASE)
    report = lite_boost.inspect(model)
    model_report = report.models[""]

    first_call = model_report.first_call
    assert first_call.batch == 1
    assert first_call.sequence_length == CASE.seq_len
    assert first_call.head_output.shape[:2] == (1, CASE.seq_len)
    assert sorted(first_call.graphs_recorded) == sorted(rewritten_graphs(model))

    graph = report.graph("blocks.0.self_attn")
    assert graph.shapes_recorded
    assert f'x: "f32[1, {CASE.seq_len}, 192]"' in graph.after_code
    assert f'view: "f32[1, {CASE.seq_len}, 12, 16]"' in graph.after_code
    assert "# lite_boost: {'attention': 'self', 'pass': 'LowerAttentionPass'" in graph.after_code
    assert "No stacktrace" not in graph.after_code
    assert f"S={CASE.seq_len} tokens" in str(report)

    # The recording run computes what the compiled graphs compute.
    assert torch.equal(run_model(model, CASE), first_output)


def test_first_forward_restores_forwards(single_process):
    model = ParallelManager(build_model(CASE))
    hooks_before = {name: len(module._forward_pre_hooks) + len(module._forward_hooks)
                    for name, module in model.named_modules()}
    run_model(model, CASE)

    for name in rewritten_graphs(model):
        module = model.get_submodule(name)
        assert vars(module)["forward"] == rewritten_graph(model, name).forward, name
    assert vars(model)[RECORDER_ATTRIBUTE].done
    hooks_after = {name: len(module._forward_pre_hooks) + len(module._forward_hooks)
                   for name, module in model.named_modules()}
    recorder_hooks = sum(hooks_before.values()) - sum(hooks_after.values())
    assert recorder_hooks == 4  # model pre and post, first block pre, head post


def test_recorder_ignores_restored_model(single_process):
    model = ParallelManager(build_model(CASE))
    lite_boost.restore(model)
    with wan_reference_attention():
        run_model(model, CASE)
    for name in ("blocks.0.self_attn", "blocks.0.cross_attn"):
        assert "forward" not in vars(model.get_submodule(name))


def test_info_summary_once_per_model(single_process, caplog):
    model = ParallelManager(build_model(CASE))
    with caplog.at_level(logging.DEBUG, logger="lite_boost.inspection"):
        run_model(model, CASE)
        run_model(model, CASE)
    infos = [record for record in caplog.records
             if record.name.startswith("lite_boost.inspection") and record.levelno == logging.INFO]
    assert len(infos) == 1
    assert infos[0].getMessage().startswith("WanModel: 2 blocks")
    debugs = [record.getMessage() for record in caplog.records
              if record.name == "lite_boost.inspection.hooks" and record.levelno == logging.DEBUG]
    # Both self-attention graphs have the same code, and both cross-attention ones.
    assert len(debugs) == 2
    assert "blocks.0.self_attn (same code in 1 more graphs)" in debugs[0]
    assert "def forward(self, x" in debugs[0]


def test_cost_pass_leaves_graph_unchanged():
    _, rewritten = rewritten_self_attention(2)
    code = rewritten.code
    nodes = [(node.name, node.op, node.target) for node in rewritten.graph.nodes]
    result = CommunicationCostPass()(rewritten)
    assert not result.modified
    assert rewritten.code == code
    assert [(node.name, node.op, node.target) for node in rewritten.graph.nodes] == nodes
    assert rewritten.meta["lite_boost"]["communication_cost"].complete


def test_cost_formula_symbolic():
    _, rewritten = rewritten_self_attention(2)
    cost = analyze_communication(rewritten)
    B, S, P, H, D = (cost_model.BATCH, cost_model.SEQUENCE, cost_model.DEGREE,
                     cost_model.HEADS, cost_model.HEAD_SIZE)
    sizes = sum(cost_model.element_size_symbol(role) for role in ("q", "k", "v", "out"))
    expected = (P - 1) * B * sympy.ceiling(S / P) * H * D * sizes / P
    bound = 4 * B * (S / P) * H * D * sympy.Symbol("s", positive=True) * (P - 1) / P

    assert sympy.simplify(cost.bytes_sent - expected) == 0
    assert sympy.simplify(cost.bytes_received - expected) == 0
    same_size = {cost_model.element_size_symbol(role): sympy.Symbol("s", positive=True)
                 for role in ("q", "k", "v", "out")}
    assert sympy.simplify(cost.lower_bound.subs(same_size) - bound) == 0
    assert [term.role for term in cost.terms] == ["q", "k", "v", "out"]


@pytest.mark.parametrize("degree, length, sent, bound", [
    # (P - 1)/P * 1 * ceil(S/P) * 12 * 16 * 16 bytes, and the bound with S/P.
    (2, 46, 35328, 35328),
    (3, 46, 32768, sympy.Rational(94208, 3)),
    (4, 47, 27648, 27072),
])
def test_cost_values(degree, length, sent, bound):
    _, rewritten = rewritten_self_attention(degree)
    cost = analyze_communication(rewritten)
    sizes = {cost_model.BATCH: 1, cost_model.SEQUENCE: length, cost_model.DEGREE: degree,
             cost_model.HEADS: 12, cost_model.HEAD_SIZE: 16}
    sizes.update({cost_model.element_size_symbol(role): 4 for role in ("q", "k", "v", "out")})
    value = cost.evaluate(sizes)
    assert value.bytes_sent == sent
    assert value.bytes_received == sent
    assert value.lower_bound == bound
    assert value.meets_lower_bound == (length % degree == 0)


def test_cost_without_collectives_zero():
    _, degree_one = rewritten_self_attention(1)
    block = build_model(CASE).blocks[0]
    cross = trace_attention(block.cross_attn)
    run_passes(cross, attention_passes(4, sdpa_attention))
    for graph_module in (degree_one, cross):
        cost = analyze_communication(graph_module)
        assert cost.terms == ()
        assert cost.bytes_sent == 0
        assert cost.lower_bound == 0
        assert cost.evaluate({}).meets_lower_bound


def test_cost_evaluate_missing_symbol():
    _, rewritten = rewritten_self_attention(2)
    with pytest.raises(ValueError, match="no value for B, D, H, P, S"):
        analyze_communication(rewritten).evaluate({})


def test_cost_unknown_dims_reported():
    _, rewritten = rewritten_self_attention(2)
    exchange = next(node for node in rewritten.graph.nodes if node.target is ulysses_all_to_all)
    exchange.kwargs = {"scatter_dim": 3, "gather_dim": 1}
    cost = analyze_communication(rewritten)
    assert not cost.complete
    assert "scatter_dim=3, gather_dim=1" in cost.unsupported[exchange.name]
    assert len(cost.terms) == 3


def record_fake_shapes(graph_module, local_tokens, heads, degree, v_dtype):
    """Attach tensor_meta as a first forward would, with v in ``v_dtype``."""
    for node in graph_module.graph.nodes:
        role = node.meta.get("lite_boost", {}).get("role")
        if role in ("q", "k", "v"):
            dtype = v_dtype if role == "v" else torch.float32
            source = torch.empty(1, local_tokens, heads, 16, dtype=dtype)
            node.args[0].meta["tensor_meta"] = _extract_tensor_metadata(source)
        if role == "out":
            source = torch.empty(1, local_tokens * degree, heads // degree, 16)
            node.args[0].meta["tensor_meta"] = _extract_tensor_metadata(source)


def test_mixed_dtypes_per_role():
    traced, rewritten = rewritten_self_attention(2)
    record_fake_shapes(rewritten, local_tokens=23, heads=12, degree=2, v_dtype=torch.bfloat16)
    sizes = {cost_model.BATCH: 1, cost_model.SEQUENCE: 46, cost_model.DEGREE: 2,
             cost_model.HEADS: 12, cost_model.HEAD_SIZE: 16}
    report = build_graph_report("blocks.0.self_attn", traced, rewritten, sizes)
    elements = 23 * 12 * 16
    assert report.cost_value.bytes_sent == elements * (4 + 4 + 2 + 4) // 2
    assert report.warnings == []


def test_recorded_shape_mismatch_warns():
    traced, rewritten = rewritten_self_attention(2)
    record_fake_shapes(rewritten, local_tokens=24, heads=12, degree=2, v_dtype=torch.float32)
    sizes = {cost_model.BATCH: 1, cost_model.SEQUENCE: 46, cost_model.DEGREE: 2,
             cost_model.HEADS: 12, cost_model.HEAD_SIZE: 16}
    report = build_graph_report("blocks.0.self_attn", traced, rewritten, sizes)
    assert len(report.warnings) == 4
    assert "recorded input shape [1, 24, 12, 16] differs" in report.warnings[0]


def test_report_graph_lookup_errors(single_process):
    report = lite_boost.inspect(ParallelManager(build_model(CASE)))
    with pytest.raises(KeyError, match="valid: blocks.0.self_attn"):
        report.graph("blocks.9.self_attn")
    with pytest.raises(KeyError, match=r"valid: \[''\]"):
        report.graph("blocks.0.self_attn", model="low_noise_model")


def test_write_single_process(single_process, tmp_path):
    model = ParallelManager(build_model(CASE))
    run_model(model, CASE)
    written = lite_boost.inspect(model).write(str(tmp_path))

    folder = tmp_path / "WanModel" / "blocks.1.self_attn"
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["after.py", "before.py", "diff.patch", "graph.dot", "summary.md"]
    assert len(written) == 4 * 5 + 2
    assert "flash_attention" in (folder / "before.py").read_text()
    assert "sdpa_attention" in (folder / "after.py").read_text()
    assert "+    sdpa_attention = " in (folder / "diff.patch").read_text()
    assert "| sdpa_attention | LowerAttentionPass |" in (folder / "summary.md").read_text()
    assert (tmp_path / "summary.json").exists()


def test_safe_name():
    assert dump.safe_name("blocks.0.self_attn") == "blocks.0.self_attn"
    assert dump.safe_name("../../etc") == ".._.._etc"
    assert dump.safe_name("..") == "__"
    assert dump.safe_name(".") == "_"
    assert dump.safe_name("") == "_"
    assert dump.safe_name("a b/c\\d") == "a_b_c_d"


def test_path_inside_rejects_symlink_out(tmp_path):
    root = tmp_path / "dump"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "model").symlink_to(outside, target_is_directory=True)

    assert dump.path_inside(str(root), "../x") == os.path.join(str(root), ".._x")
    with pytest.raises(ValueError, match="outside the dump directory"):
        dump.path_inside(str(root), "model")


class FakeRankReport:
    """Stands in for an InspectionReport in the rank rules."""

    def __init__(self, rank, code):
        self.rank = rank
        self.models = {"model": type("Model", (), {"graphs": {
            "blocks.0.self_attn": type("Graph", (), {
                "rewritten": type("Module", (), {"code": code})})}})}


@pytest.fixture
def fake_store(monkeypatch):
    store = dist.HashStore()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: store)
    monkeypatch.setattr(dump, "_dumps_per_directory", {})
    monkeypatch.setattr(dump, "RANK_ZERO_TIMEOUT", datetime.timedelta(seconds=0.2))
    return store


def test_rank_zero_always_writes(fake_store, tmp_path):
    assert dump.choose_destination(FakeRankReport(0, "a"), str(tmp_path)) == str(tmp_path)
    key = next(iter(dump._dumps_per_directory))
    assert dump._dumps_per_directory[key] == 1


def test_other_rank_same_graphs_skips(fake_store, tmp_path):
    dump.choose_destination(FakeRankReport(0, "same code"), str(tmp_path))
    dump._dumps_per_directory.clear()
    assert dump.choose_destination(FakeRankReport(1, "same code"), str(tmp_path)) is None


def test_other_rank_different_graphs_writes(fake_store, tmp_path):
    dump.choose_destination(FakeRankReport(0, "code of rank 0"), str(tmp_path))
    dump._dumps_per_directory.clear()
    destination = dump.choose_destination(FakeRankReport(2, "code of rank 2"), str(tmp_path))
    assert destination == os.path.join(str(tmp_path), "rank2")


def test_other_rank_without_rank_zero(fake_store, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lite_boost.inspection.dump"):
        destination = dump.choose_destination(FakeRankReport(1, "code"), str(tmp_path))
    assert destination == os.path.join(str(tmp_path), "rank1")
    assert "did not arrive" in caplog.text


def test_dot_fallback_marks_inserted_nodes():
    _, rewritten = rewritten_self_attention(2)
    text = dot_source(rewritten, "blocks.0.self_attn")
    assert text.startswith('digraph "blocks.0.self_attn" {')
    assert '"ulysses_all_to_all_3" [label="ulysses_all_to_all_3\\ncall_function ' \
           'ulysses_all_to_all", style=filled' in text
    assert '"ulysses_all_to_all_2" -> "sdpa_attention";' in text


def test_picture_without_graphviz(monkeypatch):
    _, rewritten = rewritten_self_attention(2)
    monkeypatch.setattr("shutil.which", lambda name: None)
    suffix, content = graph_picture(rewritten, "blocks.0.self_attn")
    assert suffix == ".dot"
    assert b"ulysses_all_to_all" in content


@pytest.fixture
def fresh_logging(monkeypatch):
    package_logger = logging.getLogger("lite_boost")
    saved_level, saved_handlers = package_logger.level, list(package_logger.handlers)
    monkeypatch.setattr(hooks, "_logging_configured", False)
    yield package_logger
    package_logger.setLevel(saved_level)
    package_logger.handlers[:] = saved_handlers


def test_log_variable_adds_handler(monkeypatch, fresh_logging):
    monkeypatch.setenv("LITE_BOOST_LOG", "debug")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    hooks.configure_logging_from_environment()
    assert fresh_logging.level == logging.DEBUG
    assert len(fresh_logging.handlers) == 1


def test_log_variable_keeps_user_handlers(monkeypatch, fresh_logging):
    monkeypatch.setenv("LITE_BOOST_LOG", "info")
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])
    hooks.configure_logging_from_environment()
    assert fresh_logging.level == logging.INFO
    assert fresh_logging.handlers == []


def test_log_variable_invalid(monkeypatch, fresh_logging, caplog):
    monkeypatch.setenv("LITE_BOOST_LOG", "verbose")
    with caplog.at_level(logging.WARNING, logger="lite_boost.inspection.hooks"):
        hooks.configure_logging_from_environment()
    assert "LITE_BOOST_LOG='verbose' is not a log level" in caplog.text
    assert fresh_logging.level == logging.NOTSET
