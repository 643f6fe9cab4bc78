"""lite_boost.inspect on 2 and 3 gloo ranks: measured bytes, dumps, the CLI and README."""

import collections
import functools
import json
import os
import re

import pytest
import torch.distributed as dist

from dit_cases import DitCase, build_model, run_model
from lite_boost.launch import run_on_ranks

# 45 tokens, padded by Wan to 46: 2 ranks need no padding, 3 ranks pad 2 tokens.
CASE = DitCase("t2v", 12, (3, 6, 10), 46, seed=2)
PADDING = {2: 0, 3: 2}
README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def bytes_without_own_piece(tensor, split_sizes, world_size, rank):
    """Bytes of ``tensor`` minus the rows that stay on this rank (dim 0 is split)."""
    rows = tensor.size(0)
    row_bytes = tensor.numel() * tensor.element_size() // rows
    own_rows = split_sizes[rank] if split_sizes else rows // world_size
    return (rows - own_rows) * row_bytes


class CollectiveBytes:
    """Count the bytes this rank sends and receives, by the cost model's convention.

    A rank's own piece is not counted. An all_to_all sends every piece but the
    own one; an all_gather sends the local input to each of the other ranks.
    """

    def __init__(self):
        self.sent = collections.Counter()
        self.received = collections.Counter()
        self.calls = collections.Counter()

    def reset(self):
        self.sent.clear()
        self.received.clear()
        self.calls.clear()

    def install(self):
        all_to_all = dist.all_to_all_single

        @functools.wraps(all_to_all)
        def counting_all_to_all(output, input, output_split_sizes=None,
                                input_split_sizes=None, group=None, **kwargs):
            world_size, rank = dist.get_world_size(group), dist.get_rank(group)
            self.calls["all_to_all"] += 1
            self.sent["all_to_all"] += bytes_without_own_piece(
                input, input_split_sizes, world_size, rank)
            self.received["all_to_all"] += bytes_without_own_piece(
                output, output_split_sizes, world_size, rank)
            return all_to_all(output, input, output_split_sizes, input_split_sizes,
                              group=group, **kwargs)

        dist.all_to_all_single = counting_all_to_all

        # Wrap the one name that lite_boost.ops.collectives calls.
        gather_name = ("all_gather_single" if getattr(dist, "all_gather_single", None)
                       else "all_gather_into_tensor")
        all_gather = getattr(dist, gather_name)

        @functools.wraps(all_gather)
        def counting_all_gather(output, input, group=None, **kwargs):
            world_size = dist.get_world_size(group)
            input_bytes = input.numel() * input.element_size()
            self.calls["all_gather"] += 1
            self.sent["all_gather"] += (world_size - 1) * input_bytes
            self.received["all_gather"] += output.numel() * output.element_size() - input_bytes
            return all_gather(output, input, group=group, **kwargs)

        setattr(dist, gather_name, counting_all_gather)


def measure_and_inspect(dump_directory):
    """Rank body: patch with LITE_BOOST_DUMP_DIR set, count bytes of two forwards."""
    import lite_boost
    from lite_boost.debug import rewritten_graphs
    from lite_boost.parallel import ParallelManager

    counter = CollectiveBytes()
    counter.install()
    model = ParallelManager(build_model(CASE))

    run_model(model, CASE)
    first = (dict(counter.sent), dict(counter.received), dict(counter.calls))
    counter.reset()
    run_model(model, CASE)
    second = (dict(counter.sent), dict(counter.received), dict(counter.calls))

    report = lite_boost.inspect(model)
    graphs = rewritten_graphs(model)
    real_counts = {}
    for name, graph_module in graphs.items():
        counts = collections.Counter(node.op for node in graph_module.graph.nodes)
        counts["total"] = len(graph_module.graph.nodes)
        counts["call_function:ulysses_all_to_all"] = sum(
            getattr(node.target, "__name__", "") == "ulysses_all_to_all"
            for node in graph_module.graph.nodes)
        real_counts[name] = dict(counts)
    compiled = all(vars(model.get_submodule(name))["forward"] == graph_module.forward
                   for name, graph_module in graphs.items())
    return {"summary": str(report), "report": report.to_dict(), "first": first,
            "second": second, "real_counts": real_counts, "compiled_forwards": compiled,
            "dump_entries": sorted(os.listdir(dump_directory))}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world_size", [2, 3])
def test_bytes_equal_formula(world_size, tmp_path):
    dump_directory = str(tmp_path / "dump")
    per_rank = run_on_ranks(measure_and_inspect, world_size, dump_directory,
                            init_kwargs={"ulysses_degree": world_size},
                            env={"LITE_BOOST_DUMP_DIR": dump_directory})

    for rank, result in enumerate(per_rank):
        model = result["report"]["models"][""]
        expected = model["bytes_per_forward"]
        sent, received, calls = result["second"]
        assert calls["all_to_all"] == 2 * 4, rank
        assert sent["all_to_all"] == expected["all_to_all"], (rank, sent, expected)
        assert received["all_to_all"] == expected["all_to_all"], (rank, received, expected)
        assert calls["all_gather"] == 1, rank
        assert sent["all_gather"] == expected["head_all_gather"], (rank, sent, expected)
        assert received["all_gather"] == expected["head_all_gather"], rank
        assert sum(sent.values()) == expected["total"], rank
        # The first forward, which ran through the shape recorder, exchanges
        # the same all_to_all bytes.
        assert result["first"][0]["all_to_all"] == expected["all_to_all"], rank

        assert model["padding_tokens"] == PADDING[world_size]
        assert model["world_size"] == world_size
        meets_bound = expected["lower_bound"] == expected["all_to_all"]
        assert meets_bound == (PADDING[world_size] == 0)
        assert result["compiled_forwards"], rank

        for name, graph in model["graphs"].items():
            for key, value in result["real_counts"][name].items():
                assert graph["node_counts"].get(key, 0) == value, (rank, name, key)
        assert model["all_to_all_per_forward"] == 8
        assert model["self_attention_rewritten"] == 2
        assert model["cross_attention_touched"] == 0
        assert (f"world size {world_size}, padding {PADDING[world_size]} token"
                in result["summary"])

    # Every rank's graphs are the same, so only rank 0 wrote.
    assert per_rank[0]["dump_entries"] == ["WanModel", "summary.json", "summary.md"]
    check_dump(dump_directory, world_size, per_rank[0]["real_counts"])


def check_dump(directory, world_size, real_counts):
    local_tokens = -(-CASE.seq_len // world_size)
    folder = os.path.join(directory, "WanModel", "blocks.0.self_attn")
    assert sorted(os.listdir(folder)) == ["after.py", "before.py", "diff.patch",
                                          "graph.dot", "summary.md"]

    after = open(os.path.join(folder, "after.py")).read()
    assert after.count("lite_boost_ops_collectives_ulysses_all_to_all(") == 4
    assert f'view: "f32[1, {local_tokens}, 12, 16]"' in after
    assert (f'ulysses_all_to_all: "f32[1, {local_tokens * world_size}, '
            f'{12 // world_size}, 16]"') in after
    before = open(os.path.join(folder, "before.py")).read()
    assert "ulysses_all_to_all" not in before
    assert "wan_modules_attention_flash_attention(" in before

    diff = open(os.path.join(folder, "diff.patch")).read()
    added = [line for line in diff.splitlines() if line.startswith("+    ")]
    assert len([line for line in added if "ulysses_all_to_all(" in line]) == 4
    assert "+    ulysses_all_to_all = lite_boost_ops_collectives_ulysses_all_to_all(" \
           "view, scatter_dim = 2, gather_dim = 1)" in diff
    assert "-    flash_attention = wan_modules_attention_flash_attention(" in diff

    graph_summary = open(os.path.join(folder, "summary.md")).read()
    assert re.search(r"\| ulysses_all_to_all_3 \| UlyssesAllToAllPass \| ulysses_all_to_all "
                     rf"\| out \| - \| 1 \| 2 \| {world_size} \|", graph_summary)
    assert "graph.dot" in os.listdir(folder)
    assert "ulysses_all_to_all" in open(os.path.join(folder, "graph.dot")).read()

    summary = json.load(open(os.path.join(directory, "summary.json")))
    graphs = summary["models"][""]["graphs"]
    for name, counts in real_counts.items():
        for key, value in counts.items():
            assert graphs[name]["node_counts"].get(key, 0) == value, (name, key)
    cross = os.path.join(directory, "WanModel", "blocks.0.cross_attn", "after.py")
    assert "ulysses_all_to_all" not in open(cross).read()
    assert f"padding {PADDING[world_size]} token" in open(
        os.path.join(directory, "summary.md")).read()


@pytest.mark.timeout(300)
def test_cli_inspect_matches_readme(tmp_path, capsys):
    from lite_boost.cli import main

    output_dir = str(tmp_path / "inspect")
    assert main(["inspect", "--output-dir", output_dir, "--readme-excerpt"]) == 0
    excerpt = capsys.readouterr().out

    assert "$ lite-boost inspect\n" in excerpt
    assert "world size 2, padding 1 token" in excerpt
    assert "+    ulysses_all_to_all = " in excerpt
    readme = open(README, encoding="utf-8").read()
    assert excerpt in readme, "README.md's excerpt is stale: run " \
        "`lite-boost inspect --readme-excerpt` and paste its output"

    folder = os.path.join(output_dir, "model", "blocks.0.self_attn")
    assert "ulysses_all_to_all" in open(os.path.join(folder, "after.py")).read()
    assert not os.path.exists(os.path.join(output_dir, "rank1"))
