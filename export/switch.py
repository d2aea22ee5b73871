"""One step graph from two traces of the same step: an ONNX ``If`` on the size of the state picks one.

``visit_onnx_rows`` (``vsml_train.model.visit_onnx``) runs the micro ticks in
cache-sized blocks of rows: faster on large grids, slower on small ones (each
block is about 30 more nodes for ONNX Runtime to dispatch). Both traces have
the same inputs, outputs and numbers; ``size_switch`` puts them into the two
branches of one ``If`` whose condition, the number of floats in the cell
states h_k, is computed from the input shapes. ONNX Runtime folds that
condition and inlines the chosen branch when a session fixes the sizes
(``vsml_runtime.sessions.specialised``), so a learner runs only its branch.
"""

from __future__ import annotations

import onnx
from onnx import compose, helper

# cell-state floats (P * E * sum_k A_k * B_k * N) from which the blocked trace is used; measured on one
# core: 784 x 10 at N = 16 (125,440 floats) 5 % faster blocked, 64 x 10 (10,240) 27 % slower
BLOCKED_FROM_FLOATS = 65_536


def _branch(model: onnx.ModelProto, prefix: str, outputs: list[str]) -> onnx.GraphProto:
    """The model's graph as an If branch: no inputs, every inner name prefixed, the outputs renamed."""
    g = compose.add_prefix_graph(model.graph, prefix, rename_inputs=False)
    del g.input[:]
    for out, name in zip(g.output, outputs, strict=True):
        assert out.name == prefix + name
    g.name = prefix.rstrip("/")
    return g


def size_switch(small: onnx.ModelProto, large: onnx.ModelProto, h_names: list[str]) -> onnx.ModelProto:
    """``large``'s graph where the inputs ``h_names`` hold >= ``BLOCKED_FROM_FLOATS`` floats, else ``small``'s.

    Both models must have the same inputs and outputs (names, order, types) and opsets.
    """
    ins = [(i.name, i.type) for i in small.graph.input]
    outs = [o.name for o in small.graph.output]
    if ins != [(i.name, i.type) for i in large.graph.input] or outs != [o.name for o in large.graph.output]:
        raise ValueError("size_switch: the two traces differ in their inputs or outputs")
    nodes, sizes = [], []
    for k, name in enumerate(h_names):
        nodes.append(helper.make_node("Shape", [name], [f"switch/shape_{k}"]))
        nodes.append(helper.make_node("ReduceProd", [f"switch/shape_{k}"], [f"switch/size_{k}"], keepdims=0))
        sizes.append(f"switch/size_{k}")
    total = sizes[0]
    for k, s in enumerate(sizes[1:]):
        nodes.append(helper.make_node("Add", [total, s], [f"switch/total_{k}"]))
        total = f"switch/total_{k}"
    limit = helper.make_tensor("switch/limit", onnx.TensorProto.INT64, [], [BLOCKED_FROM_FLOATS])
    nodes.append(helper.make_node("GreaterOrEqual", [total, "switch/limit"], ["switch/blocked"]))
    nodes.append(
        helper.make_node(
            "If",
            ["switch/blocked"],
            outs,
            name="switch/if_large",
            then_branch=_branch(large, "rows/", outs),
            else_branch=_branch(small, "plain/", outs),
        )
    )
    graph = helper.make_graph(
        nodes, small.graph.name, list(small.graph.input), list(small.graph.output), initializer=[limit]
    )
    out = helper.make_model(graph, opset_imports=list(small.opset_import), ir_version=small.ir_version)
    out.producer_name, out.producer_version = small.producer_name, small.producer_version
    return out
