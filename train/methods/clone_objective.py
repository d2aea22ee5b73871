"""The backprop-cloning objective: random problems, the cell rollout, the losses (docs/model.md §6.1).

Each sub-RNN is taught to behave like ONE weight w of a tanh layer trained by
SGD. The weight is held scaled down, w~ = W / (target_scale * G) (G the logit
gain, see ``clone.clone_config``); with the backward-pass schedule one time
step of a cell is

    forward tick on (x, e = 0):   fwd[ch]   ->  target_scale * tanh(x) * w~_t
    backward tick on (x, e):      bwd[0]    ->  target_scale * w~_t * e * tanh'(x)
    state after the step:         c[unit]   ->  w~_{t+1} = w~_t - s * mean_E(tanh(x) * e)

with s the update scale (the cell's own step size). The rollout is built from
the very functions ``vsml_train.model.step.step`` uses for a layer visit, the input
and error message layout and the averaging/clipping, on grids of A = B = 1:
the cloned cell IS the deployed cell (a parity test runs ``step`` on a grid
and the clone rollout cell by cell).

Dimension letters (docs/model.md §8): T steps, P problems (independent cells,
the learners of the rollout), R rows of G
problems sharing one input stream (P = R * G), E examples per step (state
averaged over E), Q problems of the long-horizon pool, N state, M message.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.cell import average_and_clip, input_message
from ..model.config import VSMLConfig
from ..model.params import Params
from ..model.state import state_from_noise
from ..model.visits import visit_fast


@dataclass(frozen=True)
class Tasks:
    """Statistics of the random data per ROW: G problems (cells) that share one
    input stream, like the B cells of one input in a layer, all [R].

    Attributes:
        x_keep: probability that the input of a step is the row's constant
            value (a background pixel, lit now and then); 0 for rows with
            i.i.d. normal inputs.
        x_value: that constant value.
        err_std: std of the random logits from which the errors are made
            (0: uniform predictions, large: confident ones, errors near 0 or +-1).
    """

    x_keep: Tensor
    x_value: Tensor
    err_std: Tensor

    def index(self, idx: Tensor) -> Tasks:
        """The tasks of rows ``idx`` [R'] -> a Tasks of size R'."""
        return Tasks(self.x_keep[idx], self.x_value[idx], self.err_std[idx])


def sample_tasks(gen: torch.Generator, n: int, *, x_std: float, const_x_prob: float, err_logit_std_max: float) -> Tasks:
    """Draw the statistics of ``n`` random rows (a share ``const_x_prob`` with
    a mostly constant input, kept with a probability uniform in [0.5, 1])."""
    const = torch.rand(n, generator=gen) < const_x_prob
    keep = 0.5 + 0.5 * torch.rand(n, generator=gen)
    return Tasks(
        x_keep=torch.where(const, keep, torch.zeros_like(keep)),
        x_value=torch.randn(n, generator=gen) * x_std,
        err_std=torch.rand(n, generator=gen) * err_logit_std_max,
    )


def sample_data(
    gen: torch.Generator,
    tasks: Tasks,
    steps: int,
    examples: int,
    row_size: int,
    *,
    x_std: float,
    err_classes: int,
) -> tuple[Tensor, Tensor]:
    """Inputs and errors of a window of random data for R rows of G problems.

    The G problems of a row see the same inputs and their own errors. The
    error of a problem is what the output layer sends to output 0 of a
    ``err_classes``-way softmax: e = softmax(z)[0] - [label == 0], with random
    logits z ~ N(0, err_std^2) and a uniform random label, so it has the
    distribution real errors have (mostly small and positive, sometimes near -1).

    Returns:
        x [T, P, E] and e [T, P, E] with P = R * G (problem r * G + g).
    """
    r = tasks.x_keep.shape[0]
    p = r * row_size
    shape = (steps, r, examples)
    x = torch.randn(shape, generator=gen) * x_std
    keep = torch.rand(shape, generator=gen) < tasks.x_keep.reshape(1, r, 1)
    x = torch.where(keep, tasks.x_value.reshape(1, r, 1).expand(shape), x).repeat_interleave(row_size, dim=1)
    err_std = tasks.err_std.repeat_interleave(row_size).reshape(1, p, 1, 1)
    z = torch.randn((steps, p, examples, err_classes), generator=gen) * err_std
    label0 = torch.randint(0, err_classes, (steps, p, examples), generator=gen) == 0
    e = torch.softmax(z, dim=-1)[..., 0] - label0.to(z.dtype)
    return x, e


def sample_weights(gen: torch.Generator, n: int, *, w_std_min: float, w_std_max: float) -> Tensor:
    """Initial stored weights w~_0 [P]: normal with a per-problem std log-uniform in [min, max]."""
    lo, hi = torch.log(torch.tensor(w_std_min)), torch.log(torch.tensor(w_std_max))
    std = torch.exp(lo + (hi - lo) * torch.rand(n, generator=gen))
    return torch.randn(n, generator=gen) * std


def fresh_cells(params: Params, config: VSMLConfig, w0: Tensor) -> tuple[Tensor, Tensor]:
    """Initial states of P single cells holding the weights w0 [P], through the
    deployed initial-state function (init_mode "encoded": c = w * init_enc_c, h = w * init_enc_h).

    Returns:
        h, c [P, 1, 1, 1, N] (one example; broadcast to E by ``expand_examples``).
    """
    n = config.state_size
    noise = torch.zeros(w0.shape[0], 1, 1, n // 2, dtype=w0.dtype)
    noise[..., 0] = (w0 / config.init_scale).reshape(-1, 1, 1)  # state_from_noise multiplies by init_scale / sqrt(1)
    st = state_from_noise(config, params, [noise.to(params["w_gates"].dtype)], 1)
    return st.h[0], st.c[0]


def expand_examples(s: Tensor, examples: int) -> Tensor:
    """[P, 1, 1, 1, N] -> [P, E, 1, 1, N] (every example of a learner starts from the same state)."""
    return s.expand(s.shape[0], examples, *s.shape[2:])


@dataclass(frozen=True)
class Rollout:
    """What the cells did over a window.

    Attributes:
        h, c: final states [P, E, 1, 1, N].
        fwd: forward outputs (channel ``output_channel``) [T, P, E].
        bwd: backward outputs (channel 0) [T, P, E].
        unit: the designated state unit c[unit] after each step, mean over E [T, P].
    """

    h: Tensor
    c: Tensor
    fwd: Tensor
    bwd: Tensor
    unit: Tensor


def clone_rollout(params: Params, config: VSMLConfig, h: Tensor, c: Tensor, x: Tensor, e: Tensor, unit: int) -> Rollout:
    """Run single cells (A = B = 1) over a window with the deployed backward-pass schedule.

    Per step: micro ticks on (x, e = 0), read the forward output; micro ticks
    on (x, e), read the backward output; average over E and clip. This is
    ``step`` for a 1 x 1 grid with the error supplied instead of computed.

    Args:
        h, c: [P, E, 1, 1, N] states at the window start.
        x, e: [T, P, E] inputs and errors.
        unit: index of the state unit that holds the weight.
    """
    m = config.msg_size
    no_extras: tuple[Tensor | None, Tensor | None] = (None, None)
    fwds, bwds, units = [], [], []
    for t in range(x.shape[0]):
        fwd_in = input_message(x[t].unsqueeze(-1), config)  # [P, E, 1, M]
        h, c, f_out, _ = visit_fast(params, h, c, fwd_in, None, no_extras, config, True, False)
        err = F.pad(e[t].unsqueeze(-1).unsqueeze(-1), (0, m - 1))  # [P, E, 1, M]: [e, label = 0, 0, ...]
        h, c, _, b_out = visit_fast(params, h, c, fwd_in, err, no_extras, config, False, True)
        h, c = average_and_clip(h, c, config)
        assert f_out is not None and b_out is not None
        fwds.append(f_out[:, :, 0, config.output_channel])
        bwds.append(b_out[:, :, 0, 0])
        units.append(c[:, :, 0, 0, unit].mean(1))
    return Rollout(h=h, c=c, fwd=torch.stack(fwds), bwd=torch.stack(bwds), unit=torch.stack(units))


@dataclass(frozen=True)
class Targets:
    """The SGD teacher over a window: w [T + 1, P] (w[0] the anchor), fwd and bwd [T, P, E]."""

    w: Tensor
    fwd: Tensor
    bwd: Tensor


def sgd_targets(w_start: Tensor, x: Tensor, e: Tensor, *, update_scale: float, target_scale: float) -> Targets:
    """The path of one scaled weight under (mini-batch) SGD and the outputs it implies.

    Args:
        w_start: [P] stored weight at the window start (the anchor).
        x, e: [T, P, E].
    """
    tx = torch.tanh(x)
    steps = -update_scale * (tx * e).mean(-1)  # [T, P]
    w = torch.cat([w_start.unsqueeze(0), w_start.unsqueeze(0) + torch.cumsum(steps, 0)])  # [T + 1, P]
    wt = w[:-1].unsqueeze(-1)  # [T, P, 1] the weight each step's outputs use
    return Targets(w=w, fwd=target_scale * tx * wt, bwd=target_scale * wt * e * (1 - tx * tx))


def clone_losses(
    out: Rollout,
    tgt: Targets,
    *,
    update_scale: float,
    target_scale: float,
    beta: float,
    fwd_weight: float,
    fwd_centered_weight: float,
    weight_weight: float,
    bwd_weight: float,
    row_size: int,
) -> dict[str, Tensor]:
    """Smooth-L1 losses of a window (each a scalar) and their weighted sum "loss".

    All three are measured in one unit, the largest SGD step of a stored
    weight (``update_scale``): the stored weight directly, the forward and
    backward outputs after dividing by ``target_scale``. An output error of 1
    unit then moves a logit as much as a weight one step off would.

    "loss_fwd_centered" compares the forward outputs of each row of G
    problems (same inputs) after subtracting the row mean: an output part that
    depends on the input only shifts every logit of a layer alike, which the
    softmax ignores, so this is the part a one-layer clone must get right.
    """
    out_unit = target_scale * update_scale
    fwd = F.smooth_l1_loss(out.fwd / out_unit, tgt.fwd / out_unit, beta=beta)
    t, p, e = out.fwd.shape
    rows = (t, p // row_size, row_size, e)
    d_out = out.fwd.reshape(rows) - out.fwd.reshape(rows).mean(2, keepdim=True)
    d_tgt = tgt.fwd.reshape(rows) - tgt.fwd.reshape(rows).mean(2, keepdim=True)
    fwd_c = F.smooth_l1_loss(d_out / out_unit, d_tgt / out_unit, beta=beta)
    bwd = F.smooth_l1_loss(out.bwd / out_unit, tgt.bwd / out_unit, beta=beta)
    wgt = F.smooth_l1_loss(out.unit / update_scale, tgt.w[1:] / update_scale, beta=beta)
    loss = fwd_weight * fwd + fwd_centered_weight * fwd_c + weight_weight * wgt + bwd_weight * bwd
    return {"loss": loss, "loss_fwd": fwd, "loss_fwd_centered": fwd_c, "loss_weight": wgt, "loss_bwd": bwd}
