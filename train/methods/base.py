"""The contract every meta-training method implements (docs/model.md §6).

A method is a small class with explicit state, so one run loop (progress,
logging, periodic evaluation, checkpoints, resume, Ctrl-C) drives them all:

    trainer = METHOD(config, options, seed=seed, init=params_or_None)
    for it in range(start, iterations):
        metrics = trainer.step(it)          # one meta-update; returns floats
    trainer.params()                        # current V_M (base shapes)
    trainer.state_dict() / load_state_dict()  # everything needed to resume
                                            # bit-exactly: V_M, optimizer
                                            # (Adam or CMA-ES), RNG states

Population methods (ES, CMA-ES) work on a flat parameter vector with an
ask / tell shape; gradient methods (BPTT, cloning) build a loss for
``torch.optim``. A step's randomness comes only from (seed, iteration) and the
trainer's own generators, which ``state_dict`` carries.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..model.config import VSMLConfig
from ..model.episode import make_step_fn
from ..model.params import Params, check_params, init_params
from ..model.step import Impl


class Trainer(Protocol):
    """One meta-training method with explicit, checkpointable state."""

    name: str
    config: VSMLConfig

    def step(self, iteration: int) -> dict[str, float]:
        """Do meta-update number ``iteration``; return scalar metrics (``loss`` first)."""
        ...

    def params(self) -> Params:
        """The current V_M, base shapes, detached."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly (tensors, numbers, lists, dicts only)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        ...


def starting_params(config: VSMLConfig, seed: int, init: Params | None) -> Params:
    """The V_M a trainer starts from: ``init`` (checked: base shapes) or ``init_params(config, seed)``."""
    start = init if init is not None else init_params(config, seed)
    if check_params(start, config) is not None:
        raise ValueError("init must be one V_M (base shapes, no population axis)")
    return start


def default_tasks(tasks: Any, task_options: Any, seed: int) -> Any:
    """``tasks`` when given, else the data-layer task mix of ``task_options`` (imported lazily)."""
    if tasks is not None:
        return tasks
    from .tasks import TaskMix  # the data layer is only needed for real tasks

    return TaskMix(task_options, seed)


class RolloutTrainer:
    """The set-up every trainer of VSML rollouts shares (ES, CMA-ES, BPTT); subclasses add ``setup``.

    Args:
        config: the model.
        options: the method's options (with the task mix as ``options.tasks``).
        seed: the run's seed; every random number of iteration i derives from (seed, i).
        init: a starting V_M (base shapes); default ``init_params(config, seed)``.
        tasks: a ``TaskSource`` (default: the data-layer mix of ``options.tasks``).
        device, impl, compile: where and how the step runs (``RunOptions`` of
            the run: ``methods.registry.make_trainer`` passes them).
    """

    name: str
    gradient_free = False  # ES, CMA-ES: rollouts without autograd, where impl "fast" means the fused kernel

    def __init__(
        self,
        config: VSMLConfig,
        options: Any,
        seed: int,
        init: Params | None = None,
        tasks: Any = None,
        *,
        device: str = "cpu",
        impl: Impl = "fast",
        compile: bool = False,
    ) -> None:
        self.config, self.options, self.seed = config, options, seed
        self.device = torch.device(device)
        self.tasks = default_tasks(tasks, options.tasks, seed)
        if self.gradient_free and impl == "fast" and not compile:
            impl = "fused"  # same numbers (the per-cell parity tests), ~1.6-1.8x faster ES rollouts on CPU
        self.impl = impl
        self.step_fn = make_step_fn(config, impl, compile)
        self.setup(starting_params(config, seed, init))

    def setup(self, start: Params) -> None:
        """Build the method's own state (parameters, optimiser) from the starting V_M."""
        raise NotImplementedError
