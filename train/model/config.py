"""The VSML model configuration (docs/model.md §2-4).

One frozen dataclass holds every switch of the model. Defaults are the
reference defaults; presets for experiments are small named functions or
files elsewhere. Unknown keys are errors (``VSMLConfig.from_dict``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

from ..options import from_plain, to_plain

BatchAverage = Literal["none", "full", "half"]
Reduction = Literal["mean", "sum", "sqrt"]
InitMode = Literal["random", "encoded"]


@dataclass(frozen=True)
class VSMLConfig:
    """Every option of the VSML network.

    Attributes:
        state_size: N, LSTM units per sub-RNN (16 default, 32 for cloning).
        msg_size: M, numbers per forward / backward message (8).
        micro_ticks: LSTM updates per layer visit on the same messages (2).
        hidden: sizes of the hidden layers; input and output sizes come from
            the data, so one V_M serves any (A, B). ``()`` = one dense layer.
        shared_params: one V_M for every layer (True) or one per layer.
        feed_label: put onehot(y) in channel 1 of the output error message.
        backward_pass: after predicting, run a second tick in reverse layer
            order on (x_t, e_t) so the error is absorbed in the same step.
        layer_norm: LayerNorm (with learned gain and bias) on each cell's
            outgoing messages, before the reduction over the grid.
        output_channel: channel of the last forward message read as a logit.
        tanh_bound: logits are soft-bounded: bound * tanh(gain * y / bound).
        output_gain: gain applied to the output channel before the bound (1 in
            the reference; a cloned backprop sets its imitated learning rate
            through it without retraining).
        reduction: how cell messages are pooled over the grid ("mean" default,
            "sum" as written in the paper, "sqrt": the sum divided by the square
            root of the fan-in, so that with a fixed ``output_gain`` the logit
            change of one SGD-like step on z-scored inputs does not grow with A).
        bias_input: when set, a constant input of this value is appended to
            every example, so the first layer has A + 1 inputs and its extra
            row of cells acts as the bias of each output (None: no bias).
        init_random: draw the initial state from a normal truncated at +-2
            std with std ``init_scale / sqrt(A)``; if False the noise is zero.
        init_scale: multiplier of the initial-state std.
        init_mode: "random" (reference): the draws fill the first N/2 units of
            c, h = 0. "encoded": one draw w_ab per cell (a random weight) is
            written into the state through learned vectors, c = w * init_enc_c,
            h = w * init_enc_h (used by backprop cloning).
        clip: after every step h and c are clipped to [-clip, clip]
            (None disables clipping).
        batch_average: averaging of the state over the examples of one learner
            after every step: "none", "full" (whole state, paper) or "half"
            (first N/2 units, public code).
        input_gate_offset: fixed offset added to the input-gate pre-activation.
        forget_gate_offset: fixed offset added to the forget-gate pre-activation.
        coord_inputs: extra cell inputs a/(A-1) and b/(B-1) (paper appendix).
        time_input: extra cell input log1p(t) / 10 with t the step count.
        layer_input: extra cell input k / K for layer k of K (0-based k).
        online_norm: standardise every input feature online before the first
            layer (docs/model.md §3.4): running mean and second moment over the
            examples seen so far, this step's included, started from
            ``online_norm_prior`` pseudo-examples of mean 0 and variance 1; the
            feature becomes (x - mean) / sqrt(var + ``online_norm_eps``). A
            size-free front end: it makes the learner indifferent to each
            feature's scale and offset, as Vowpal Wabbit's normalised updates.
        online_norm_eps: added to the running variance (a constant feature maps to 0).
        online_norm_prior: pseudo-examples of the prior (mean 0, variance 1).
        online_norm_center_prior: when set (q_c), the feature is centred by
            the running mean with q_c pseudo-examples of mean 0 instead of q:
            mean_c = sum(x) / (n + q_c), while its scale keeps the prior of q.
            A small q_c centres an offset feature from its first examples
            without the early variance blowing up (docs/model.md §3.4); None
            centres with q as well.
        ncm_temperature: when set (tau), the step outputs the log of an online
            mixture of the network's prediction with a nearest-class-mean
            expert at temperature tau (``vsml_train.model.mixture``, docs/model.md
            §3.5); needs ``online_norm``. None: the network's logits alone.
        ncm_shrink: pseudo-examples that shrink each class mean toward the
            centre (> 0; an unseen class sits at the centre).
        ncm_share: the mixture's fixed share s in (0, 1): after each labelled
            step the weights move a fraction s toward uniform (1/Z each).
        ncm_share_decay: when set (tau_s), the share after step t is
            s / (1 + t / tau_s): the weights may settle on the better expert
            as the stream goes on. None: the share stays s.
        ncm_unseen_penalty: when set (kappa > 0), the class-mean experts (NCM,
            GNB, LDA) give each class with no labelled example yet kappa nats
            less, so that they stop guessing a class they know nothing of
            (an unseen class sits at the centre, the nearest mean for most
            inputs), and the mixture's weights skip the log-likelihood of an
            example whose label is such a class: no expert could have
            predicted it (docs/model.md §3.5). None: unseen classes as any.
        ncm_unseen_mirror: when set (alpha_u > 0), a class with no labelled
            example sits, for the class-mean experts, at the mirror of the
            labelled examples through the data's mean (the unseen classes,
            alpha_u pseudo-examples each, balance the labelled ones;
            ``mixture.class_offsets``), not at the centre: on two classes an
            input on the far side of the centre from the first labels is
            nearer the unseen class. None: an unseen class at the centre.
        ncm_net_scale: the network's logits are multiplied by this inside the
            mixture (its own error message still uses them as they are): a
            temperature for the network expert, whose early predictions are
            sharper than its accuracy warrants. 1 leaves them as they are.
        gnb_temperature: when set (tau_g), a third expert joins the mixture:
            Gaussian naive Bayes with one within-class variance per feature
            pooled over the classes (diagonal LDA) and a class prior, at
            temperature tau_g (docs/model.md §3.5); needs ``ncm_temperature``.
        gnb_class_prior: its Dirichlet pseudo-examples per class (alpha > 0).
        gnb_var_prior: pseudo-examples (nu > 0) that shrink each feature's
            within-class variance toward the features' common spread.
        lda_temperature: when set (tau_l), a fourth expert joins the mixture:
            linear discriminant analysis with the full pooled within-class
            covariance, shrunk toward each feature's own variance, at
            temperature tau_l (docs/model.md §3.5); needs ``gnb_temperature``
            (it shares the GNB expert's class prior).
        lda_var_prior: pseudo-examples (nu_l > 0) of that shrinkage.
        lda_iterations: conjugate-gradient iterations per step (>= 1) that
            refine the discriminant directions, warm-started from the last
            step's (docs/model.md §3.5).
        lda_max_features: when set, the LDA expert runs only on inputs of at
            most this many features (0: never); above it its state is empty
            ([P, 0, 0] and [P, 0, B]) and the mixture is the other experts'
            alone, so the [A, A] products are not paid for on large inputs. None:
            any size.
        error_scale: multiplier of the error channel of the output's backward message.
        error_decay_steps: when set (tau), the error channel is further scaled by
            (1 + t / tau) ** -error_decay_power at step t: an annealed step size
            (docs/model.md §3.4); None keeps it constant.
        error_decay_power: the power of that decay.
    """

    state_size: int = 16
    msg_size: int = 8
    micro_ticks: int = 2
    hidden: tuple[int, ...] = ()
    shared_params: bool = True
    feed_label: bool = True
    backward_pass: bool = False
    layer_norm: bool = False
    output_channel: int = 1
    tanh_bound: float = 100.0
    output_gain: float = 1.0
    reduction: Reduction = "mean"
    bias_input: float | None = None
    init_random: bool = True
    init_scale: float = 1.0
    init_mode: InitMode = "random"
    clip: float | None = 4.0
    batch_average: BatchAverage = "half"
    input_gate_offset: float = -5.0
    forget_gate_offset: float = 5.0
    coord_inputs: bool = False
    time_input: bool = False
    layer_input: bool = False
    online_norm: bool = False
    online_norm_eps: float = 0.01
    online_norm_prior: float = 1.0
    online_norm_center_prior: float | None = None
    ncm_temperature: float | None = None
    ncm_shrink: float = 1.0
    ncm_share: float = 0.03
    ncm_share_decay: float | None = None
    ncm_net_scale: float = 1.0
    ncm_unseen_penalty: float | None = None
    ncm_unseen_mirror: float | None = None
    gnb_temperature: float | None = None
    gnb_class_prior: float = 3.0
    gnb_var_prior: float = 10.0
    lda_temperature: float | None = None
    lda_var_prior: float = 3.0
    lda_iterations: int = 2
    lda_max_features: int | None = None
    error_scale: float = 1.0
    error_decay_steps: float | None = None
    error_decay_power: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        errors = []
        if self.state_size < 2 or self.state_size % 2:
            errors.append(f"state_size must be an even integer >= 2, got {self.state_size}")
        if self.msg_size < 2:
            errors.append(f"msg_size must be >= 2 (error and label channels), got {self.msg_size}")
        if self.micro_ticks < 1:
            errors.append(f"micro_ticks must be >= 1, got {self.micro_ticks}")
        if any(h < 1 for h in self.hidden):
            errors.append(f"hidden sizes must be >= 1, got {self.hidden}")
        if not 0 <= self.output_channel < self.msg_size:
            errors.append(f"output_channel must be in [0, {self.msg_size}), got {self.output_channel}")
        if self.tanh_bound <= 0:
            errors.append(f"tanh_bound must be > 0, got {self.tanh_bound}")
        if self.reduction not in ("mean", "sum", "sqrt"):
            errors.append(f"reduction must be 'mean', 'sum' or 'sqrt', got {self.reduction!r}")
        if self.bias_input is not None and not math.isfinite(self.bias_input):
            errors.append(f"bias_input must be a finite number or None, got {self.bias_input}")
        if self.batch_average not in ("none", "full", "half"):
            errors.append(f"batch_average must be 'none', 'full' or 'half', got {self.batch_average!r}")
        if self.init_mode not in ("random", "encoded"):
            errors.append(f"init_mode must be 'random' or 'encoded', got {self.init_mode!r}")
        if self.clip is not None and self.clip <= 0:
            errors.append(f"clip must be > 0 or None, got {self.clip}")
        if not (math.isfinite(self.online_norm_eps) and self.online_norm_eps > 0):
            errors.append(f"online_norm_eps must be a finite number > 0, got {self.online_norm_eps}")
        if not (math.isfinite(self.online_norm_prior) and self.online_norm_prior > 0):
            errors.append(f"online_norm_prior must be a finite number > 0, got {self.online_norm_prior}")
        qc = self.online_norm_center_prior
        if qc is not None and not (math.isfinite(qc) and qc >= 0):
            errors.append(f"online_norm_center_prior must be a finite number >= 0 or None, got {qc}")
        tau = self.ncm_temperature
        if tau is not None and not (math.isfinite(tau) and tau > 0):
            errors.append(f"ncm_temperature must be a finite number > 0 or None, got {tau}")
        if tau is not None and not self.online_norm:
            errors.append("ncm_temperature needs online_norm (the expert standardises with its moments)")
        if not (math.isfinite(self.ncm_shrink) and self.ncm_shrink > 0):
            errors.append(f"ncm_shrink must be a finite number > 0, got {self.ncm_shrink}")
        if not (math.isfinite(self.ncm_share) and 0 < self.ncm_share < 1):
            errors.append(f"ncm_share must lie in (0, 1), got {self.ncm_share}")
        for name in (
            "ncm_share_decay",
            "gnb_temperature",
            "lda_temperature",
            "ncm_unseen_penalty",
            "ncm_unseen_mirror",
        ):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                errors.append(f"{name} must be a finite number > 0 or None, got {v}")
        if self.ncm_unseen_penalty is not None and tau is None:
            errors.append("ncm_unseen_penalty needs ncm_temperature (it acts on the mixture's class-mean experts)")
        if self.ncm_unseen_mirror is not None and tau is None:
            errors.append("ncm_unseen_mirror needs ncm_temperature (it acts on the mixture's class-mean experts)")
        if self.gnb_temperature is not None and tau is None:
            errors.append("gnb_temperature needs ncm_temperature (the third expert of the NCM mixture)")
        if self.lda_temperature is not None and self.gnb_temperature is None:
            errors.append("lda_temperature needs gnb_temperature (the fourth expert shares its class prior)")
        if not (isinstance(self.lda_iterations, int) and 1 <= self.lda_iterations <= 64):
            errors.append(f"lda_iterations must be an integer in [1, 64], got {self.lda_iterations!r}")
        limit = self.lda_max_features
        if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit <= 2**20):
            errors.append(f"lda_max_features must be an integer in [0, 2**20] or None, got {limit!r}")
        for name in ("gnb_class_prior", "gnb_var_prior", "lda_var_prior", "ncm_net_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                errors.append(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not (math.isfinite(self.error_scale) and self.error_scale > 0):
            errors.append(f"error_scale must be a finite number > 0, got {self.error_scale}")
        if self.error_decay_steps is not None and not (
            math.isfinite(self.error_decay_steps) and self.error_decay_steps > 0
        ):
            errors.append(f"error_decay_steps must be a finite number > 0 or None, got {self.error_decay_steps}")
        if not (math.isfinite(self.error_decay_power) and self.error_decay_power >= 0):
            errors.append(f"error_decay_power must be a finite number >= 0, got {self.error_decay_power}")
        if errors:
            raise ValueError("invalid VSMLConfig: " + "; ".join(errors))

    @property
    def n_layers(self) -> int:
        """K, the number of VSML layers (hidden layers + the output layer)."""
        return len(self.hidden) + 1

    @property
    def n_experts(self) -> int:
        """Z, the experts of the output mixture (docs/model.md §3.5): 0 without it, else 2, 3 or 4."""
        if self.ncm_temperature is None:
            return 0
        return 2 + (self.gnb_temperature is not None) + (self.lda_temperature is not None)

    @property
    def counts_steps(self) -> bool:
        """Whether the state carries the step count t (time input, online norm or error decay need it)."""
        return self.time_input or self.online_norm or self.error_decay_steps is not None

    @property
    def n_extra_inputs(self) -> int:
        """X, the number of extra cell inputs beyond the two messages."""
        return 2 * self.coord_inputs + int(self.time_input) + int(self.layer_input)

    @property
    def cell_input_size(self) -> int:
        """Size of u_ab = [fwd_in[a], bwd_in[b], extras]: 2M + X."""
        return 2 * self.msg_size + self.n_extra_inputs

    @property
    def n_bias_inputs(self) -> int:
        """How many constant inputs the first layer has beside the A features (0 or 1)."""
        return int(self.bias_input is not None)

    def layer_sizes(self, n_features: int, n_classes: int) -> list[tuple[int, int]]:
        """The (A_k, B_k) grid of each layer for a given dataset shape (A_1 counts the bias input)."""
        sizes = [n_features + self.n_bias_inputs, *self.hidden, n_classes]
        return list(itertools.pairwise(sizes))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists; ``vsml_train.options.to_plain``)."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VSMLConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError`` (``vsml_train.options.from_plain``)."""
        return from_plain(cls, d)

    def replace(self, **changes: Any) -> VSMLConfig:
        """A copy with some fields changed (validated like the constructor)."""
        return VSMLConfig.from_dict({**self.to_dict(), **changes})
