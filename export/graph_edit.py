"""Small edits of exported ONNX graphs shared by the export-time rewrites."""

from __future__ import annotations

import onnx


def _names_read_by_subgraphs(node: onnx.NodeProto) -> set[str]:
    """Every name read inside ``node``'s subgraphs (If/Loop/Scan bodies may read outer values)."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            for inner in graph.node:
                names.update(inner.input)
                names |= _names_read_by_subgraphs(inner)
    return names


def prune_to_outputs(graph: onnx.GraphProto) -> None:
    """Drop, in place, every node, initializer and value annotation the graph's outputs do not
    need (walking the nodes backwards from the outputs)."""
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
            needed |= _names_read_by_subgraphs(node)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    for field in (graph.initializer, graph.value_info):
        survivors = [item for item in field if item.name in needed]
        del field[:]
        field.extend(survivors)
