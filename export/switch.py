"""One graph from two traces of the same step (or init): an ONNX ``If`` on the sizes picks one.

``visit_onnx_rows`` (``vsml_train.model.visit_onnx``) runs the micro ticks in
cache-sized blocks of rows: faster on large grids, slower on small ones (each
block is about 30 more nodes for ONNX Runtime to dispatch). Both traces have
the same inputs, outputs and numbers; ``size_switch`` puts them into the two
branches of one ``If`` whose condition, the number of floats in the cell
states h_k, is computed from the input shapes. ONNX Runtime folds that
condition and inlines the chosen branch when a session fixes the sizes
(``vsml_runtime.sessions.specialised``), so a learner runs only its branch.

``features_switch`` does the same for the LDA expert's size limit
(``lda_max_features``): one trace with the expert, one without (its state
empty), chosen by the number of input features; each branch may itself be a
``size_switch``.
"""

from __future__ import annotations

import onnx
from onnx import helper

# cell-state floats (P * E * sum_k A_k * B_k * N) from which the blocked trace is used; measured on one
# core: 784 x 10 at N = 16 (125,440 floats) 5 % faster blocked, 64 x 10 (10,240) 27 % slower
BLOCKED_FROM_FLOATS = 65_536


def _subgraphs(n: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds as attributes (an If's branches, a Loop's body)."""
    return [g for a in n.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def _defined(g: onnx.GraphProto) -> set[str]:
    """Every name ``g`` defines: initializers and node outputs, in nested subgraphs too (not its inputs)."""
    names = {i.name for i in g.initializer} | {o for n in g.node for o in n.output if o}
    for sub in (sub for n in g.node for sub in _subgraphs(n)):
        names |= _defined(sub) | {i.name for i in sub.input}
    return names


def _rename(g: onnx.GraphProto, names: set[str], prefix: str) -> None:
    """Prefix every use and definition of ``names`` in ``g`` and its subgraphs (in place).

    Unlike ``onnx.compose.add_prefix_graph``, this also renames what a nested subgraph (a ``torch.cond``'s
    ``If``) reads from the scopes around it.
    """

    def fix(name: str) -> str:
        return prefix + name if name in names else name

    for i in g.initializer:
        i.name = fix(i.name)
    for v in (*g.input, *g.output, *g.value_info):
        v.name = fix(v.name)
    for n in g.node:
        n.name = prefix + n.name if n.name else n.name
        n.input[:] = [fix(x) for x in n.input]
        n.output[:] = [fix(x) for x in n.output]
        for sub in _subgraphs(n):
            _rename(sub, names, prefix)


def _branch(model: onnx.ModelProto, prefix: str, outputs: list[str]) -> onnx.GraphProto:
    """The model's graph as an If branch: no inputs, every inner name prefixed, the outputs renamed."""
    g = onnx.GraphProto()
    g.CopyFrom(model.graph)
    _rename(g, _defined(g) | {o.name for o in g.output}, prefix)
    del g.input[:]
    for out, name in zip(g.output, outputs, strict=True):
        assert out.name == prefix + name
    g.name = prefix.rstrip("/")
    return g


def _check_same_signature(a: onnx.ModelProto, b: onnx.ModelProto, shapes: bool = True) -> None:
    """ValueError unless both graphs have the same input names and types (``shapes``: with their shapes) and outputs."""

    def sig(m: onnx.ModelProto) -> list[tuple[str, object]]:
        return [(i.name, i.type if shapes else i.type.tensor_type.elem_type) for i in m.graph.input]

    if sig(a) != sig(b) or [o.name for o in a.graph.output] != [o.name for o in b.graph.output]:
        raise ValueError("switch: the two traces differ in their inputs or outputs")


def _if_model(
    cond_nodes: list[onnx.NodeProto],
    cond: str,
    limit: onnx.TensorProto,
    then: tuple[onnx.ModelProto, str],
    other: tuple[onnx.ModelProto, str],
) -> onnx.ModelProto:
    """One ``If`` on ``cond`` (computed by ``cond_nodes``) between two traces; the first's inputs and metadata."""
    first = then[0]
    outs = [o.name for o in first.graph.output]
    node = helper.make_node(
        "If",
        [cond],
        outs,
        name=f"{cond}/if",
        then_branch=_branch(then[0], then[1], outs),
        else_branch=_branch(other[0], other[1], outs),
    )
    graph = helper.make_graph(
        [*cond_nodes, node], first.graph.name, list(first.graph.input), list(first.graph.output), initializer=[limit]
    )
    out = helper.make_model(graph, opset_imports=list(first.opset_import), ir_version=first.ir_version)
    out.producer_name, out.producer_version = first.producer_name, first.producer_version
    return out


def size_switch(small: onnx.ModelProto, large: onnx.ModelProto, h_names: list[str]) -> onnx.ModelProto:
    """``large``'s graph where the inputs ``h_names`` hold >= ``BLOCKED_FROM_FLOATS`` floats, else ``small``'s.

    Both models must have the same inputs and outputs (names, order, types) and opsets.
    """
    _check_same_signature(small, large)
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
    return _if_model(nodes, "switch/blocked", limit, (large, "rows/"), (small, "plain/"))


def features_switch(
    within: onnx.ModelProto, above: onnx.ModelProto, shaped: str, axis: int, offset: int, max_features: int
) -> onnx.ModelProto:
    """``within``'s graph where the features A <= ``max_features``, else ``above``'s (the LDA expert's size limit).

    A is read from the input ``shaped``: its size along ``axis`` minus ``offset`` (the bias inputs when
    that axis is the first layer's grid). Both models must have the same inputs and outputs.
    """
    _check_same_signature(within, above, shapes=False)  # (the LDA state's axis may be fixed at 0 in ``above``)
    nodes = [
        helper.make_node("Shape", [shaped], ["lda_switch/shape"]),
        helper.make_node("Gather", ["lda_switch/shape", "lda_switch/axis"], ["lda_switch/size"]),
        helper.make_node("Sub", ["lda_switch/size", "lda_switch/offset"], ["lda_switch/features"]),
        helper.make_node("LessOrEqual", ["lda_switch/features", "lda_switch/limit"], ["lda_switch/within"]),
    ]
    consts = [
        helper.make_node(
            "Constant", [], [f"lda_switch/{k}"], value=helper.make_tensor(k, onnx.TensorProto.INT64, [], [v])
        )
        for k, v in (("axis", axis), ("offset", offset))
    ]
    limit = helper.make_tensor("lda_switch/limit", onnx.TensorProto.INT64, [], [max_features])
    return _if_model([*consts, *nodes], "lda_switch/within", limit, (within, "lda/"), (above, "nolda/"))
