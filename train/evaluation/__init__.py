"""vsml_train.evaluation: online (prequential) evaluation and baselines (docs/model.md §7).

Typical use::

    from vsml_train.evaluation import EvalProtocol, VSMLLearner, run_protocol

    result = run_protocol(EvalProtocol("fashion-mnist"), learners=[VSMLLearner(params, config)])
    print(result.table())

Modules: ``metrics`` (scores of logits [T, S, B], the one interval formula),
``learners`` (the ``OnlineLearner`` protocol, ``VSMLLearner``,
``MetaRNNLearner``), ``baselines`` (online SGD and Adam), ``external``
(River, Vowpal Wabbit), ``imitated_sgd`` (the SGD a clone imitates),
``harness`` (same streams for every learner, the one tune-and-evaluate path,
the reference figures), ``meta_test`` (the periodic meta-test of a training
run), ``plots``. Builds on ``vsml_train.model`` and ``vsml_train.data`` only.
"""

from .baselines import (
    REFERENCE_GRIDS,
    REFERENCE_TABLE,
    OnlineBaseline,
    ReferenceFigures,
    online_adam,
    online_sgd,
    reference_baselines,
)
from .harness import (
    EvalProtocol,
    EvalResult,
    LRSearch,
    ProtocolResult,
    ReferenceCheck,
    check_against_reference,
    evaluate,
    evaluate_one,
    protocol_streams,
    run_protocol,
    tune_and_evaluate,
    tune_lr,
    tuning_streams,
)
from .learners import OnlineLearner, VSMLLearner
from .metrics import (
    Estimate,
    OnlineCurves,
    OnlineSummary,
    ShotsCurve,
    accuracy_by_shots,
    online_curves,
    paired_difference,
    shots_seen,
    summarize,
)

__all__ = [
    "REFERENCE_GRIDS",
    "REFERENCE_TABLE",
    "Estimate",
    "EvalProtocol",
    "EvalResult",
    "LRSearch",
    "OnlineBaseline",
    "OnlineCurves",
    "OnlineLearner",
    "OnlineSummary",
    "ProtocolResult",
    "ReferenceCheck",
    "ReferenceFigures",
    "ShotsCurve",
    "VSMLLearner",
    "accuracy_by_shots",
    "check_against_reference",
    "evaluate",
    "evaluate_one",
    "online_adam",
    "online_curves",
    "online_sgd",
    "paired_difference",
    "protocol_streams",
    "reference_baselines",
    "run_protocol",
    "shots_seen",
    "summarize",
    "tune_and_evaluate",
    "tune_lr",
    "tuning_streams",
]
