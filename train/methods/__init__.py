"""vsml_train.methods: the ways to meta-learn V_M (docs/model.md §6).

Modules: ``base`` (the ``Trainer`` contract, the shared ``RolloutTrainer``
set-up), one module per method (``clone`` with ``clone_options``,
``clone_objective`` and ``clone_eval``; ``es``; ``bptt``; ``cmaes``;
``meta_rnn`` for the Meta RNN baseline), ``tasks`` (the task mix),
``runner`` (the one run loop: progress, metrics, checkpoints, resume),
``checkpoint``, ``distributed`` and ``registry`` (methods by name, presets,
option paths). Builds on ``vsml_train.model`` and ``vsml_train.data``; the
meta-test is passed into ``runner.train`` (``vsml_train.evaluation.meta_test``
builds it), never imported here.
"""
