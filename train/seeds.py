"""The seed table: every derivation tag of the project, defined once.

A run has one seed; every random number it draws comes from that seed and a
tuple of integers naming what the number is for. The tags below are those
integers. Their values are part of what the shipped learners and the
recorded figures were made with: changing one changes every number drawn
under it (the V_M hashes of ``tests/test_shipped_model.py``, the model card's
tables), so they are kept as they were when spread over the modules.

Two mechanisms, both pure functions of their keys (docs/model.md,
"Reproducibility"):

- ``derive_seed(seed, *tags)``: a 63-bit integer (sha256) for the methods'
  torch generators (``derive_seed(seed, iteration, STATE, learner)``);
- numpy ``SeedSequence(seed, spawn_key=(KEY, ...))`` for the data layer's
  streams and the evaluation's tuning streams.

Standard library and numpy only: every layer may import it.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

import numpy as np

# --- derive_seed tags of meta-training (derive_seed(seed, iteration, TAG, ...))
CMAES_RNG = 0  # derive_seed(seed, CMAES_RNG): the CMA-ES optimizer's own RandomState
NOISE = 1  # ES: the directions eps of an iteration
STATE = 2  # ES, CMA-ES, BPTT: the initial state of learner i of an iteration
SOURCE = 3  # the task mix: which dataset or family an iteration draws from
PROJECT = 4  # the task mix: whether an iteration's episodes are projected
EVAL = 5  # the periodic meta-test: derive_seed(seed, EVAL, k) streams of dataset k
EVAL_STATE = 1 << 20  # derive_seed(seed, EVAL, EVAL_STATE): the meta-test's initial state
BLOCKS_PER_ITERATION = 1 << 24  # sampler index of block b of iteration i: i * this + b

# --- numpy SeedSequence spawn keys
EPISODE_KEY = 0x45504953  # data sampler: EpisodeSampler iterations (never a child of sample_streams)
PROTOCOL_TUNE_KEY = 0x54554E45  # evaluation harness: EvalProtocol's tuning streams (tune_on="separate")
CLI_TUNE_KEY = 7  # vsml-eval's tuning streams (the model card's tables were tuned on these)
SUITE_TUNE_TASK = "tune"  # the invariance suite's SGD-tuning streams are the task named so

# --- backprop cloning: SeedSequence([seed, iteration, STREAM]) streams
CLONE_BATCH = 0  # the problems of update `iteration`
CLONE_POOL = 1  # the stage-2 pool's first problems (iteration 0)
CLONE_HELD_OUT = 7  # clone_errors' held-out problems (never used by the trainer)
CLONE_COMPARE_OFFSET = 7919  # compare_with_sgd draws its streams from seed + this


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from a tuple of integers (sha256; independent streams for distinct keys)."""
    data = b"".join(struct.pack("<q", int(k) & 0x7FFFFFFFFFFFFFFF) for k in keys)
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little") >> 1


def task_seed(seed: int, task: str) -> np.random.SeedSequence:
    """A meta-test suite task's streams: the suite seed and a stable hash (crc32) of the task's name.

    Adding or removing a task never changes another task's streams.
    """
    return np.random.SeedSequence(seed, spawn_key=(zlib.crc32(task.encode()),))
