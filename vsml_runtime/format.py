"""The exported-model format: file names, metadata keys and their parsing.

Shared by the exporter (which writes it) and the runtime (which reads it);
imports nothing but the standard library, so ``vsml_export`` can use it
without pulling in ONNX Runtime and ``vsml_runtime`` without torch.

An exported model is two ONNX files side by side:

* ``model.onnx``: one VSML step. Inputs: the state tensors (names in
  ``state_names``, layout in ``state_layout``), ``x`` [P, E, A] float32 and
  ``y`` [P, E] int64 labels (-1 = no label). Outputs: ``new_<name>`` for
  every state tensor, then ``logits`` [P, E, B] (made before ``y`` is used).
* ``model.init.onnx``: the initial state. Inputs: ``noise_k`` [P, A_k, B_k, H]
  (H = N / 2) of standard-normal noise truncated at +-2, drawn by the
  runtime, and ``examples`` [E] (only its length is used). Outputs: the state
  tensors, named as the step's inputs.

Both carry the same metadata (``metadata_props``, all values strings, JSON
where structured) under the keys below. The step graph also records the
sha256 of its init graph's bytes and its own digest (``vsml_runtime.digest``:
the graph, weights and metadata), both checked at load.

Every file that is not such a model, or whose metadata is inconsistent,
raises ``FormatError`` (a ``ValueError``) when read, and so does every
unreadable or inconsistent learner state file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "vsml-onnx"
FORMAT_VERSION = 1

K_FORMAT = "vsml.format"
K_FORMAT_VERSION = "vsml.format_version"
K_GRAPH = "vsml.graph"  # "step" or "init"
K_PROJECT_VERSION = "vsml.project_version"
K_CONFIG = "vsml.config"  # VSMLConfig.to_dict() as JSON, after export-time overrides
K_CLIP = "vsml.clip"  # JSON number or null
K_BATCH_AVERAGE = "vsml.batch_average"  # "none" | "full" | "half"
K_STATE = "vsml.state"  # JSON, see StateSpec
FEATURES_AXIS = "A"  # the symbolic size of the step graph's x input [P, E, A]
K_INIT = "vsml.init"  # JSON, see InitSpec
K_PARAMS_SHA256 = "vsml.params_sha256"
K_OPSET = "vsml.opset"
K_INPUTS = "vsml.inputs"  # JSON list of input names in order
K_OUTPUTS = "vsml.outputs"  # JSON list of output names in order
K_EXPORTER = "vsml.exporter"
K_INIT_FILE = "vsml.init_file"  # step graph only: file name of the init graph (same folder)
K_INIT_SHA256 = "vsml.init_sha256"  # step graph only: sha256 of that file's bytes
K_STEP_SHA256 = "vsml.step_sha256"  # step graph only: its own digest (``vsml_runtime.digest``)
K_INPUT_CONTRACT = "vsml.input_contract"  # JSON, see InputContract
K_MODEL_META = "vsml.model_meta"  # JSON: the model.pt's free-form metadata

X_NAME = "x"
Y_NAME = "y"
LOGITS_NAME = "logits"
EXAMPLES_NAME = "examples"
NEW_PREFIX = "new_"


def init_path_for(step_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.init.onnx`` (``name`` -> ``name.init.onnx`` otherwise)."""
    p = Path(step_path)
    if p.suffix == ".onnx":
        return p.with_name(p.stem + ".init.onnx")
    return p.with_name(p.name + ".init.onnx")


class FormatError(ValueError):
    """A model or learner state file is unreadable, not what it claims, or inconsistent.

    The one exception the runtime raises for a bad file (a ``ValueError``, so
    ``except ValueError`` catches it too): corrupt, truncated or edited
    ``model.onnx`` / ``model.init.onnx``, metadata that does not match the
    graph, a learner state of another model or other sizes. Missing files
    raise ``FileNotFoundError`` instead.
    """


# bounds of the metadata a runtime accepts (far beyond any exported model)
MAX_DIM = 1 << 16  # N, M, H, hidden sizes
MAX_FEATURE_LIMIT = 1 << 20  # a feature-limited state axis's limit (the config's lda_max_features)
MIN_INIT_MASS = 0.5  # the init noise range must hold at least half the normal's mass (the exporter's +-2: 95%)


@dataclass(frozen=True)
class StateSpec:
    """Names and layout of the state tensors.

    ``layout[name]`` lists the axes of each tensor: "P", "E", size names from
    ``sizes`` (first = features "A", last = classes "B", hidden layers
    between) and fixed sizes "N" / "M" given in ``dims``. An axis in
    ``feature_limits`` (e.g. "A_lda": 256, the LDA expert's) is the features A
    where A <= its limit and 0 above it: that state is empty on larger inputs.
    """

    names: tuple[str, ...]
    layout: dict[str, tuple[str, ...]]
    sizes: tuple[str, ...]  # e.g. ("A", "H1", "B")
    dims: dict[str, int]  # fixed: N, M, H, and the config's hidden sizes H1.. as defaults
    dtype: str = "float32"
    bias_inputs: int = 0  # constant inputs the graph appends to the A features (axis A holds A + this)
    feature_limits: dict[str, int] = field(default_factory=dict)  # axis -> A up to the limit, else 0

    def to_json(self) -> str:
        d: dict[str, object] = {
            "names": list(self.names),
            "layout": {k: list(v) for k, v in self.layout.items()},
            "sizes": list(self.sizes),
            "dims": self.dims,
            "dtype": self.dtype,
            "bias_inputs": self.bias_inputs,
        }
        if self.feature_limits:  # (absent from files made before it existed)
            d["feature_limits"] = self.feature_limits
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StateSpec:
        d = json.loads(text)
        return cls(
            names=tuple(d["names"]),
            layout={k: tuple(v) for k, v in d["layout"].items()},
            sizes=tuple(d["sizes"]),
            dims={k: int(v) for k, v in d["dims"].items()},
            dtype=d.get("dtype", "float32"),
            bias_inputs=int(d.get("bias_inputs", 0)),
            feature_limits={k: int(v) for k, v in d.get("feature_limits", {}).items()},
        )

    def resolve(self, n_features: int, n_classes: int, n_learners: int, n_examples: int) -> dict[str, tuple[int, ...]]:
        """Concrete shape of every state tensor."""
        dims = dict(self.dims)
        dims.update({self.sizes[-1]: n_classes, "P": n_learners, "E": n_examples})
        dims[self.sizes[0]] = n_features + self.bias_inputs
        dims.setdefault(FEATURES_AXIS, n_features)  # the features alone (per-feature state, e.g. online_norm)
        dims.update(self.limited_dims(n_features))
        return {name: tuple(dims[a] for a in self.layout[name]) for name in self.names}

    def limited_dims(self, n_features: int) -> dict[str, int]:
        """The ``feature_limits`` axes' sizes at ``n_features``: A up to each limit, else 0."""
        return {axis: n_features if n_features <= limit else 0 for axis, limit in self.feature_limits.items()}

    def layer_sizes(self, n_features: int, n_classes: int) -> list[int]:
        """[A (+ bias inputs), hidden..., B] for the given data shape: the grids of the layers."""
        return [n_features + self.bias_inputs, *(self.dims[s] for s in self.sizes[1:-1]), n_classes]


@dataclass(frozen=True)
class InitSpec:
    """How the runtime draws the noise of the init graph."""

    noise_inputs: tuple[str, ...]
    noise_layout: tuple[str, ...]  # ("P", "A_k", "B_k", "H"): sizes of layer k, H = N / 2
    distribution: str  # "truncated_normal"
    low: float
    high: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "noise_inputs": list(self.noise_inputs),
                "noise_layout": list(self.noise_layout),
                "distribution": self.distribution,
                "low": self.low,
                "high": self.high,
                "examples_input": EXAMPLES_NAME,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> InitSpec:
        d = json.loads(text)
        return cls(
            noise_inputs=tuple(d["noise_inputs"]),
            noise_layout=tuple(d["noise_layout"]),
            distribution=d["distribution"],
            low=float(d["low"]),
            high=float(d["high"]),
        )


@dataclass(frozen=True)
class InputContract:
    """What the model expects its inputs to look like.

    VSML is meta-trained on inputs standardised with ONE scalar mean and std
    per dataset (reference section 7): roughly zero mean, unit variance per
    feature. ``mean`` / ``std`` are the statistics used in meta-training when
    the model file recorded them (None otherwise).
    """

    standardized: str = "scalar"
    mean: float | None = None
    std: float | None = None

    def to_json(self) -> str:
        return json.dumps({"standardized": self.standardized, "mean": self.mean, "std": self.std}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InputContract:
        d = json.loads(text)
        return cls(standardized=d.get("standardized", "scalar"), mean=d.get("mean"), std=d.get("std"))


@dataclass(frozen=True)
class ModelInfo:
    """The parsed metadata of an exported step graph."""

    graph: str
    project_version: str
    config: dict[str, Any]
    clip: float | None
    batch_average: str
    state: StateSpec
    init: InitSpec
    params_sha256: str
    opset: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    exporter: str
    input_contract: InputContract
    init_file: str | None
    init_sha256: str | None
    model_meta: dict[str, Any]

    @property
    def state_size(self) -> int:
        return int(self.state.dims["N"])

    @property
    def n_layers(self) -> int:
        return len(self.state.sizes) - 1


def parse_metadata(props: dict[str, str], where: str = "model") -> ModelInfo:
    """Parse ``metadata_props`` (a plain dict); raises ``FormatError`` naming what is wrong."""
    if props.get(K_FORMAT) != FORMAT:
        raise FormatError(f"{where} is not an exported VSML model (metadata {K_FORMAT!r} != {FORMAT!r})")
    version = props.get(K_FORMAT_VERSION)
    if version != str(FORMAT_VERSION):
        raise FormatError(f"{where} has format version {version}, this runtime reads {FORMAT_VERSION}")
    try:
        clip = json.loads(props[K_CLIP])
        info = ModelInfo(
            graph=props[K_GRAPH],
            project_version=props[K_PROJECT_VERSION],
            config=json.loads(props[K_CONFIG]),
            clip=None if clip is None else float(clip),
            batch_average=props[K_BATCH_AVERAGE],
            state=StateSpec.from_json(props[K_STATE]),
            init=InitSpec.from_json(props[K_INIT]),
            params_sha256=props[K_PARAMS_SHA256],
            opset=int(props[K_OPSET]),
            inputs=tuple(json.loads(props[K_INPUTS])),
            outputs=tuple(json.loads(props[K_OUTPUTS])),
            exporter=props.get(K_EXPORTER, "unknown"),
            input_contract=InputContract.from_json(props.get(K_INPUT_CONTRACT, "{}")),
            init_file=props.get(K_INIT_FILE),
            init_sha256=props.get(K_INIT_SHA256),
            model_meta=json.loads(props.get(K_MODEL_META, "{}")),
        )
        check_info(info, where)
        return info
    except FormatError:
        raise
    except Exception as exc:  # KeyError, ValueError, TypeError, AttributeError... from any malformed value
        raise FormatError(f"{where}: incomplete or malformed VSML metadata: {exc!r}") from exc


def _normal_mass(low: float, high: float) -> float:
    """P(low <= Z <= high) for a standard normal Z."""
    return 0.5 * (math.erf(high / math.sqrt(2.0)) - math.erf(low / math.sqrt(2.0)))


def _check_state(spec: StateSpec, where: str) -> None:
    names = spec.names
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise FormatError(f"{where}: state names must be distinct non-empty strings, got {names!r}")
    if (
        len(spec.sizes) < 2
        or not all(isinstance(a, str) for a in spec.sizes)
        or len(set(spec.sizes)) != len(spec.sizes)
    ):
        raise FormatError(f"{where}: state sizes must be >= 2 distinct names, got {spec.sizes!r}")
    for key in ("N", "H", *spec.sizes[1:-1]):
        v = spec.dims.get(key)
        if not isinstance(v, int) or not 1 <= v <= MAX_DIM:
            raise FormatError(f"{where}: state dim {key} must be an integer in [1, {MAX_DIM}], got {v!r}")
    if set(spec.layout) != set(names):
        raise FormatError(f"{where}: the state layout must name exactly the state tensors")
    for axis, limit in spec.feature_limits.items():
        if not (isinstance(axis, str) and axis) or axis in spec.dims or axis in spec.sizes or axis in ("P", "E"):
            raise FormatError(f"{where}: feature-limited axis {axis!r} clashes with another axis")
        if not isinstance(limit, int) or not 0 <= limit <= MAX_FEATURE_LIMIT:
            raise FormatError(f"{where}: the limit of axis {axis!r} must be an integer in [0, {MAX_FEATURE_LIMIT}]")
    known = {"P", "E", FEATURES_AXIS, spec.sizes[0], spec.sizes[-1], *spec.dims, *spec.feature_limits}
    for name, axes in spec.layout.items():
        if not axes or any(not isinstance(a, str) or a not in known for a in axes):
            raise FormatError(f"{where}: state tensor {name!r} has unknown axes {axes!r}")
    if spec.dtype != "float32":
        raise FormatError(f"{where}: state dtype must be float32, got {spec.dtype!r}")


def _check_init(spec: InitSpec, where: str) -> None:
    low, high = spec.low, spec.high
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise FormatError(f"{where}: the init noise range must be finite with low < high, got [{low}, {high}]")
    if _normal_mass(low, high) < MIN_INIT_MASS:
        raise FormatError(
            f"{where}: the init noise range [{low}, {high}] holds less than {MIN_INIT_MASS:.0%} of the normal's mass"
        )
    if spec.noise_layout != ("P", "A_k", "B_k", "H") or not all(isinstance(n, str) for n in spec.noise_inputs):
        raise FormatError(f"{where}: unknown init noise layout {spec.noise_layout!r}")


def check_info(info: ModelInfo, where: str) -> None:
    """FormatError unless the parsed metadata is self-consistent (sizes, names, ranges)."""
    _check_state(info.state, where)
    _check_init(info.init, where)
    if len(info.init.noise_inputs) != info.n_layers:
        raise FormatError(f"{where}: {len(info.init.noise_inputs)} noise inputs for {info.n_layers} layers")
    if info.graph not in ("step", "init"):
        raise FormatError(f"{where}: unknown graph kind {info.graph!r}")
    if info.clip is not None and not (math.isfinite(info.clip) and info.clip > 0):
        raise FormatError(f"{where}: clip must be a positive number or null, got {info.clip!r}")
    for v in (info.input_contract.mean, info.input_contract.std):
        if v is not None and not (isinstance(v, int | float) and math.isfinite(v)):
            raise FormatError(f"{where}: the input contract's mean / std must be finite numbers, got {v!r}")
    if info.input_contract.std is not None and info.input_contract.std <= 0:
        raise FormatError(f"{where}: the input contract's std must be > 0")
