"""The tracer and each pass, checked on the graph and against eager Wan."""

import pytest
import torch
import torch.fx as fx

from dit_cases import CASES, build_model
from lite_boost.ops.attention import sdpa_attention
from lite_boost.ops.collectives import ulysses_all_to_all, ulysses_all_to_all_qkv
from lite_boost.passes import PassFailedError, attention_passes, run_passes, trace_attention
from lite_boost.passes.attention_match import find_attention_calls
from lite_boost.passes.find_attention import FindAttentionPass
from lite_boost.passes.fuse_qkv_all_to_all import FuseQkvAllToAllPass
from lite_boost.passes.meta import provenance
from lite_boost.passes.ulysses_all_to_all import UlyssesAllToAllPass
from reference import reference_attention, wan_reference_attention


@pytest.fixture
def block():
    return build_model(CASES[1]).blocks[0]


def self_attention_inputs(seed=0, batch=1, tokens=45, dim=192):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, dim, generator=generator)
    seq_lens = torch.tensor([tokens - 3] * batch)
    grid_sizes = torch.tensor([[3, 3, 5]] * batch)
    return x, seq_lens, grid_sizes


def calls_of(graph_module, target):
    return [n for n in graph_module.graph.nodes
            if n.op == "call_function" and n.target is target]


def test_traced_self_attention_bitwise(block):
    model = build_model(CASES[1])
    x, seq_lens, grid_sizes = self_attention_inputs()
    with wan_reference_attention():
        traced = trace_attention(block.self_attn)
        eager = block.self_attn(x, seq_lens, grid_sizes, model.freqs)
        graph = traced(x, seq_lens, grid_sizes, model.freqs)
    assert torch.equal(eager, graph)


def test_traced_cross_attention_bitwise(block):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 45, 192, generator=generator)
    context = torch.randn(2, 16, 192, generator=generator)
    with wan_reference_attention():
        traced = trace_attention(block.cross_attn)
        eager = block.cross_attn(x, context, None)
        graph = traced(x, context, None)
    assert torch.equal(eager, graph)


def test_trace_shares_weights(block):
    traced = trace_attention(block.self_attn)
    for name, parameter in traced.named_parameters():
        assert parameter is block.self_attn.get_parameter(name), name
    assert traced.q is block.self_attn.q


def test_find_attention_by_data_flow(block):
    self_graph = trace_attention(block.self_attn)
    cross_graph = trace_attention(block.cross_attn)
    FindAttentionPass()(self_graph)
    FindAttentionPass()(cross_graph)
    self_matches = find_attention_calls(self_graph.graph)
    cross_matches = find_attention_calls(cross_graph.graph)
    assert [m.kind for m in self_matches] == ["self"]
    assert [m.kind for m in cross_matches] == ["cross"]
    assert provenance(self_matches[0].node)["attention"] == "self"
    assert provenance(cross_matches[0].node)["attention"] == "cross"


def test_ulysses_pass_inserts_pair(block):
    graph_module = trace_attention(block.self_attn)
    run_passes(graph_module, attention_passes(2, sdpa_attention))
    exchanges = calls_of(graph_module, ulysses_all_to_all)
    roles = {provenance(n)["role"]: n for n in exchanges}
    assert sorted(roles) == ["k", "out", "q", "v"]
    for role in ("q", "k", "v"):
        assert roles[role].kwargs == {"scatter_dim": 2, "gather_dim": 1}
    assert roles["out"].kwargs == {"scatter_dim": 1, "gather_dim": 2}
    # q and k are exchanged before rope, so rope gets the whole sequence.
    import wan.modules.model as wan_model
    ropes = calls_of(graph_module, wan_model.rope_apply)
    assert len(ropes) == 2
    assert {rope.args[0] for rope in ropes} == {roles["q"], roles["k"]}
    kernel = calls_of(graph_module, sdpa_attention)
    assert len(kernel) == 1
    assert kernel[0].args[2] is roles["v"]
    assert roles["out"].args[0] is kernel[0]
    assert "ulysses_all_to_all" in graph_module.code


def test_cross_attention_left_alone(block):
    graph_module = trace_attention(block.cross_attn)
    run_passes(graph_module, attention_passes(4, sdpa_attention))
    assert calls_of(graph_module, ulysses_all_to_all) == []
    kernel = calls_of(graph_module, sdpa_attention)
    assert len(kernel) == 1
    assert [arg.op for arg in kernel[0].args] == ["call_method"] * 3
    assert provenance(kernel[0])["attention"] == "cross"


def test_degree_one_has_no_collective(block):
    graph_module = trace_attention(block.self_attn)
    run_passes(graph_module, attention_passes(1, sdpa_attention))
    assert calls_of(graph_module, ulysses_all_to_all) == []
    assert "flash_attention" not in graph_module.code


def test_lowering_records_provenance(block):
    graph_module = trace_attention(block.self_attn)
    run_passes(graph_module, attention_passes(2, sdpa_attention))
    kernel = calls_of(graph_module, sdpa_attention)[0]
    info = provenance(kernel)
    assert info["pass"] == "LowerAttentionPass"
    assert info["replaces"] == "flash_attention"
    assert info["kernel"] == "sdpa_attention"
    assert kernel.kwargs["k_lens"].op == "placeholder"


def test_lowered_graph_matches_eager(block):
    model = build_model(CASES[1])
    x, seq_lens, grid_sizes = self_attention_inputs(batch=2)
    graph_module = trace_attention(block.self_attn)
    run_passes(graph_module, attention_passes(1, sdpa_attention))
    with wan_reference_attention():
        eager = block.self_attn(x, seq_lens, grid_sizes, model.freqs)
    lowered = graph_module(x, seq_lens, grid_sizes, model.freqs)
    tolerance = 1e-5 * eager.abs().max().item()
    assert (lowered - eager).abs().max().item() <= tolerance


def test_ulysses_pass_runs_once(block):
    graph_module = trace_attention(block.self_attn)
    FindAttentionPass()(graph_module)
    first = UlyssesAllToAllPass(2)(graph_module)
    second = UlyssesAllToAllPass(2)(graph_module)
    assert first.modified
    assert not second.modified
    assert len(calls_of(graph_module, ulysses_all_to_all)) == 4


def test_failing_pass_is_named(block):
    class BrokenPass(FindAttentionPass):
        def call(self, graph_module):
            raise KeyError("boom")

    graph_module = trace_attention(block.self_attn)
    with pytest.raises(PassFailedError, match="BrokenPass.*FindAttentionPass"):
        run_passes(graph_module, [FindAttentionPass(), BrokenPass()])


def test_lint_failure_is_named(block):
    class DanglingPass(FindAttentionPass):
        def call(self, graph_module):
            # Use the last computed value before it is defined.
            graph = graph_module.graph
            nodes = list(graph.nodes)
            first_compute = next(n for n in nodes if n.op != "placeholder")
            last_compute = nodes[-2]
            with graph.inserting_before(first_compute):
                graph.call_function(torch.relu, (last_compute,))
            return super().call(graph_module).__class__(graph_module, True)

    graph_module = trace_attention(block.self_attn)
    with pytest.raises(PassFailedError, match="DanglingPass"):
        run_passes(graph_module, [DanglingPass()])


def test_reference_attention_masks_padding():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 2, 8, generator=generator) for _ in range(3))
    k_lens = torch.tensor([5, 3])
    expected = sdpa_attention(q, k, v, k_lens=k_lens)
    actual = reference_attention(q, k, v, k_lens=k_lens)
    assert torch.allclose(actual, expected, atol=1e-6)
    # Changing a padded key must not change the output of batch 1.
    k[1, 4] += 100.0
    assert torch.allclose(sdpa_attention(q, k, v, k_lens=k_lens)[1], expected[1], atol=1e-6)


def test_fused_pass_merges_qkv_exchanges(block):
    import operator

    import wan.modules.model as wan_model

    graph_module = trace_attention(block.self_attn)
    run_passes(graph_module, attention_passes(2, sdpa_attention, fuse_qkv=True))
    fused = calls_of(graph_module, ulysses_all_to_all_qkv)
    assert len(fused) == 1
    info = provenance(fused[0])
    assert info["pass"] == "FuseQkvAllToAllPass"
    assert info["role"] == "qkv"
    assert len(info["replaces"]) == 3
    assert (info["scatter_dim"], info["gather_dim"], info["world_size"]) == (2, 1, 2)
    # The inputs are the q, k and v views that the separate exchanges took.
    assert [node.op for node in fused[0].args] == ["call_method"] * 3
    assert [node.target for node in fused[0].args] == ["view"] * 3

    parts = {provenance(user)["role"]: user for user in fused[0].users}
    assert sorted(parts) == ["k", "q", "v"]
    for index, role in enumerate(("q", "k", "v")):
        assert parts[role].target is operator.getitem
        assert parts[role].args[1] == index
    # Rope still runs after the exchange, on the full sequence.
    ropes = calls_of(graph_module, wan_model.rope_apply)
    assert {rope.args[0] for rope in ropes} == {parts["q"], parts["k"]}
    kernel = calls_of(graph_module, sdpa_attention)[0]
    assert kernel.args[2] is parts["v"]

    remaining = calls_of(graph_module, ulysses_all_to_all)
    assert [provenance(node)["role"] for node in remaining] == ["out"]
    assert remaining[0].args[0] is kernel


def test_fused_pass_leaves_cross_attention(block):
    graph_module = trace_attention(block.cross_attn)
    run_passes(graph_module, attention_passes(2, sdpa_attention, fuse_qkv=True))
    assert calls_of(graph_module, ulysses_all_to_all_qkv) == []
    assert calls_of(graph_module, ulysses_all_to_all) == []


def test_fused_pass_without_exchanges_is_noop(block):
    graph_module = trace_attention(block.self_attn)
    FindAttentionPass()(graph_module)
    before = str(graph_module.graph)
    result = FuseQkvAllToAllPass()(graph_module)
    assert not result.modified
    assert str(graph_module.graph) == before


def test_fused_pass_left_out_by_default(block):
    names = [type(graph_pass).__name__ for graph_pass in attention_passes(2, sdpa_attention)]
    assert "FuseQkvAllToAllPass" not in names
    names = [type(graph_pass).__name__
             for graph_pass in attention_passes(1, sdpa_attention, fuse_qkv=True)]
    assert "FuseQkvAllToAllPass" not in names


def test_fused_pass_runs_once(block):
    graph_module = trace_attention(block.self_attn)
    FindAttentionPass()(graph_module)
    UlyssesAllToAllPass(2)(graph_module)
    first = FuseQkvAllToAllPass()(graph_module)
    second = FuseQkvAllToAllPass()(graph_module)
    assert first.modified
    assert not second.modified
    assert len(calls_of(graph_module, ulysses_all_to_all_qkv)) == 1
    assert len(calls_of(graph_module, ulysses_all_to_all)) == 1
