"""Tracing ONE call of the VSML step (and of the initial state) into ONNX graphs.

Dimension letters (docs/model.md §8): P learners, E examples per step, A inputs,
B classes, N state, M message; ``H1``.. and ``H`` (= N/2) are the format's
dimension names of the hidden layer sizes and the noise units.

The graphs are traced at small sizes chosen to be distinct (and unlike N, M
and 1) with P, E, A, B and the hidden sizes marked dynamic, so that no tracer
can confuse two axes or bake a size-1 special case in; ``verify`` then runs
them at other sizes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

import onnx
import torch
from torch import Tensor

from vsml_runtime import format as fmt
from vsml_train.model.config import VSMLConfig
from vsml_train.model.state import init_state, state_names
from vsml_train.model.step import Impl
from vsml_train.model.visit_onnx import row_blocks

from .module import InitModule, StepModule
from .options import ExportError, ExportOptions
from .switch import features_switch, size_switch

# sizes the graphs are traced at: all distinct and different from N, M and 1,
# so that no tracer can confuse two axes or bake a size-1 special case
_TRACE_P, _TRACE_E, _TRACE_A, _TRACE_B = 2, 3, 7, 5
_TRACE_HIDDEN = (6, 9, 11, 13, 15, 17)


def size_names(config: VSMLConfig) -> list[str]:
    """Names of the layer sizes: ["A", "H1", ..., "B"]."""
    return ["A", *(f"H{i + 1}" for i in range(len(config.hidden))), "B"]


def grid_names(config: VSMLConfig) -> list[str]:
    """Names of the layer grids' sizes: ``size_names``, with "Ab" (A + the bias input) first when there is one."""
    names = size_names(config)
    return ["Ab", *names[1:]] if config.n_bias_inputs else names


# axes of the output mixture's state (vsml_train.model.state): classes B (the last size), features, Z its experts
NCM_LAYOUT = {
    "ncm_sum": ("P", "E", "B", fmt.FEATURES_AXIS),
    "ncm_count": ("P", "E", "B"),
    "mix_logw": ("P", "E", "Z"),
    "ncm_within": ("P", "E", fmt.FEATURES_AXIS),
    "lda_scatter": ("P", fmt.FEATURES_AXIS, fmt.FEATURES_AXIS),  # one per learner: no E axis
    "lda_dir": ("P", fmt.FEATURES_AXIS, "B"),
}
# the LDA expert's feature axis under ``lda_max_features``: A up to the limit, 0 above (format.StateSpec)
LDA_AXIS = "A_lda"


def _ncm_axes(name: str, config: VSMLConfig) -> tuple[str, ...]:
    axes = NCM_LAYOUT[name]
    if name.startswith("lda_") and config.lda_max_features is not None:
        return tuple(LDA_AXIS if a == fmt.FEATURES_AXIS else a for a in axes)
    return axes


def state_spec(config: VSMLConfig) -> fmt.StateSpec:
    """Names and axes of the state tensors (``vsml_train.model.state`` layout)."""
    sizes = grid_names(config)
    layout: dict[str, tuple[str, ...]] = {}
    for name in state_names(config):
        if name == "t":
            layout[name] = ("P", "E")
            continue
        if name in ("x_mean", "x_sq"):  # online_norm's moments, one per input feature (not the bias input)
            layout[name] = ("P", "E", fmt.FEATURES_AXIS)
            continue
        if name in NCM_LAYOUT:  # the NCM mixture's class sums, counts and expert weights
            layout[name] = _ncm_axes(name, config)
            continue
        kind, k = name.rsplit("_", 1)
        k_i = int(k)
        if kind in ("h", "c"):
            layout[name] = ("P", "E", sizes[k_i], sizes[k_i + 1], "N")
        else:  # bwd_k: message layer k receives, one per output of layer k
            layout[name] = ("P", "E", sizes[k_i + 1], "M")
    dims = {"N": config.state_size, "M": config.msg_size, "H": config.state_size // 2}
    if config.ncm_temperature is not None:
        dims["Z"] = config.n_experts  # the mixture's experts, the network's first
    dims.update({s: h for s, h in zip(sizes[1:-1], config.hidden, strict=True)})
    limits = {}
    if config.lda_temperature is not None and config.lda_max_features is not None:
        limits[LDA_AXIS] = config.lda_max_features
    return fmt.StateSpec(
        names=tuple(state_names(config)),
        layout=layout,
        sizes=tuple(sizes),
        dims=dims,
        bias_inputs=config.n_bias_inputs,
        feature_limits=limits,
    )


def init_spec(config: VSMLConfig) -> fmt.InitSpec:
    """The noise the runtime draws for the init graph."""
    return fmt.InitSpec(
        noise_inputs=tuple(f"noise_{k}" for k in range(config.n_layers)),
        noise_layout=("P", "A_k", "B_k", "H"),
        distribution="truncated_normal",
        low=-2.0,
        high=2.0,
    )


# ---------------------------------------------------------------------------
# tracing


def _example_state(
    params: dict[str, Tensor], config: VSMLConfig, p: int, e: int, sizes: list[int], seed: int
) -> dict[str, Tensor]:
    """A random state (non-zero h, c, bwd, t) with the given layer sizes."""
    cfg = config.replace(hidden=tuple(sizes[1:-1]))
    gen = torch.Generator().manual_seed(seed)
    st = init_state(cfg, sizes[0], sizes[-1], p, e, generator=gen, params=params).to_dict()
    out = {}
    for name, t in st.items():
        out[name] = (torch.rand(t.shape, generator=gen) * 2 - 1) * (0.9 if name != "t" else 0) + t
        if name == "t":
            out[name] = torch.full(t.shape, 3.0)
        if name in ("ncm_count", "ncm_within"):  # counts and sums of squares a stream can reach: >= 0
            out[name] = out[name].abs()
        if name == "lda_scatter":  # a scatter matrix is symmetric positive semi-definite
            out[name] = out[name] @ out[name].transpose(-1, -2)
    return out


def step_args(
    params: dict[str, Tensor], config: VSMLConfig, p: int, e: int, sizes: list[int], seed: int
) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(seed + 1)
    st = _example_state(params, config, p, e, sizes, seed)
    x = torch.randn(p, e, sizes[0], generator=gen)
    y = torch.randint(-1, sizes[-1], (p, e), generator=gen)
    return (*(st[n] for n in state_names(config)), x, y)


def trace_sizes(config: VSMLConfig) -> list[int]:
    return [_TRACE_A, *_TRACE_HIDDEN[: len(config.hidden)], _TRACE_B]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and warnings (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _to_onnx(
    module: torch.nn.Module,
    args: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    axes: list[dict[int, str]],
    options: ExportOptions,
) -> onnx.ModelProto:
    """Export ``module(*args)`` with the named dynamic axes; returns the ModelProto."""
    if options.exporter == "dynamo":
        from torch.export import Dim

        dims: dict[str, Dim] = {}
        shapes = []
        for ax in axes:
            shapes.append({i: dims.setdefault(name, Dim(name, min=1)) for i, name in ax.items()})
        program = torch.onnx.export(
            module,
            args,
            None,
            input_names=input_names,
            output_names=output_names,
            opset_version=options.opset,
            dynamo=True,
            dynamic_shapes=(tuple(shapes),),
        )
        assert program is not None
        return program.model_proto
    if options.exporter == "legacy":
        buf = io.BytesIO()
        torch.onnx.export(
            module,
            args,
            buf,
            input_names=input_names,
            output_names=output_names,
            opset_version=options.opset,
            dynamo=False,
            dynamic_axes={n: ax for n, ax in zip(input_names, axes, strict=True)},
        )
        return onnx.load_from_string(buf.getvalue())
    raise ExportError(f"unknown exporter {options.exporter!r}; expected 'dynamo' or 'legacy'")


def _name_dims(model: onnx.ModelProto, names: list[str], axes: list[dict[int, str]]) -> onnx.ModelProto:
    """The graph's inputs with their dynamic axes named as the state layout names them (in place).

    torch.export names a size after the first input it met it in (the LDA state's A_lda, equal to A in
    its trace, becomes A's); the runtime fixes sizes by name, and A_lda must stay free to be 0 where A is not.
    """
    by_name = dict(zip(names, axes, strict=True))
    for value in model.graph.input:
        for i, axis in by_name.get(value.name, {}).items():
            value.type.tensor_type.shape.dim[i].dim_param = axis
    return model


def _lda_branches(config: VSMLConfig) -> tuple[VSMLConfig, VSMLConfig] | None:
    """With ``lda_max_features``: the configs of the two traces, with the LDA expert at any size and without it."""
    if config.lda_temperature is None or config.lda_max_features is None:
        return None
    return config.replace(lda_max_features=None), config.replace(lda_max_features=0)


def trace_step(params: dict[str, Tensor], config: VSMLConfig, options: ExportOptions) -> onnx.ModelProto:
    """The step graph (no metadata yet).

    With ``lda_max_features``, two traces (the LDA expert running, and absent with its empty state passed
    through) under one ``If`` on the number of features (``switch.features_switch``).
    """
    branches = _lda_branches(config)
    if branches is None:
        return _trace_step(params, config, config, options)
    within, above = (_trace_step(params, config, c, options) for c in branches)
    return features_switch(within, above, fmt.X_NAME, 2, 0, config.lda_max_features)  # type: ignore[arg-type]


def _trace_step(
    params: dict[str, Tensor], config: VSMLConfig, math_config: VSMLConfig, options: ExportOptions
) -> onnx.ModelProto:
    """One trace of the step: ``config``'s names and axes, ``math_config``'s step (an LDA branch's)."""
    spec = state_spec(config)
    names = list(spec.names)
    inputs = [*names, fmt.X_NAME, fmt.Y_NAME]
    outputs = [fmt.NEW_PREFIX + n for n in names] + [fmt.LOGITS_NAME]
    axes = [dict(enumerate(spec.layout[n])) for n in names]
    fixed = ("N", "M", "Z")  # fixed by the config
    if options.exporter == "dynamo" and math_config.lda_max_features == 0:
        fixed += (LDA_AXIS,)  # the branch without the LDA expert: its state is empty (torch.export: no dynamic 0)
    axes = [{i: a for i, a in ax.items() if a not in fixed} for ax in axes]
    axes += [{0: "P", 1: "E", 2: fmt.FEATURES_AXIS}, {0: "P", 1: "E"}]
    args = step_args(params, math_config, _TRACE_P, _TRACE_E, trace_sizes(config), seed=0)

    def trace(impl: Impl) -> onnx.ModelProto:
        with _quiet(), torch.no_grad():
            module = StepModule(params, math_config, impl=impl).eval()
            return _name_dims(_to_onnx(module, args, inputs, outputs, axes, options), inputs, axes)

    if not options.tuned:
        return trace("blocked")
    if row_blocks(config) == 1 or options.exporter != "legacy":
        # (torch.export rejects the blocks' concatenation as an output of the batch averaging's torch.cond:
        # its symbolic strides are not plain products of the sizes; the dynamo graph stays unblocked)
        return trace("onnx")
    # the ticks in blocks of rows on large grids, unblocked on small ones (export/switch.py)
    return size_switch(trace("onnx"), trace("onnx-rows"), [n for n in names if n.startswith("h_")])


def trace_init(params: dict[str, Tensor], config: VSMLConfig, options: ExportOptions) -> onnx.ModelProto:
    """The init graph (no metadata yet); with ``lda_max_features`` two traces under one ``If`` as the step's."""
    branches = _lda_branches(config)
    if branches is None:
        return _trace_init(params, config, config, options)
    within, above = (_trace_init(params, config, c, options) for c in branches)
    noise = init_spec(config).noise_inputs[0]  # [P, A_0, B_0, H]: A_0 the features and the bias inputs
    return features_switch(within, above, noise, 1, config.n_bias_inputs, config.lda_max_features)  # type: ignore[arg-type]


def _trace_init(
    params: dict[str, Tensor], config: VSMLConfig, math_config: VSMLConfig, options: ExportOptions
) -> onnx.ModelProto:
    spec = state_spec(config)
    ispec = init_spec(config)
    sizes = trace_sizes(config)
    h = config.state_size // 2
    gen = torch.Generator().manual_seed(0)
    grids = config.replace(hidden=tuple(sizes[1:-1])).layer_sizes(sizes[0], sizes[-1])
    noise = [torch.randn(_TRACE_P, a, b, h, generator=gen).clamp(-2, 2) for a, b in grids]
    args = (*noise, torch.zeros(_TRACE_E))
    axes = [{0: "P", 1: spec.sizes[k], 2: spec.sizes[k + 1]} for k in range(config.n_layers)] + [{0: "E"}]
    with _quiet(), torch.no_grad():
        module = InitModule(params, math_config).eval()
        return _to_onnx(module, args, [*ispec.noise_inputs, fmt.EXAMPLES_NAME], list(spec.names), axes, options)
