"""`vsml-model`: look into a ``model.pt``, or derive one with some config fields changed (V_M untouched).

    vsml-model show model.pt
    vsml-model set model.pt new.pt reduction=sqrt output_gain=14 bias_input=3 init_scale=0

``set`` keeps V_M bit for bit and changes only fields of ``VSMLConfig`` that
need no retraining to be meaningful (pooling, gains, the bias input, the
initial state, clipping, batch averaging); the new file's metadata records
the parent's V_M hash and every change, so the derived learner's recipe is
in the file itself. Values are read as JSON (``3``, ``true``, ``null``),
anything else as a string.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .model.config import VSMLConfig
from .model.model_file import ModelFile, ModelFileError, load_model, save_model

# fields whose change leaves V_M's shapes and meaning intact (the others would need retraining)
SETTABLE = (
    "reduction",
    "bias_input",
    "output_gain",
    "tanh_bound",
    "init_random",
    "init_scale",
    "clip",
    "batch_average",
    "online_norm",
    "online_norm_eps",
    "online_norm_prior",
    "online_norm_center_prior",
    "ncm_temperature",
    "ncm_shrink",
    "ncm_share",
    "ncm_share_decay",
    "ncm_net_scale",
    "ncm_unseen_penalty",
    "ncm_unseen_mirror",
    "gnb_temperature",
    "gnb_class_prior",
    "gnb_var_prior",
    "lda_temperature",
    "lda_var_prior",
    "lda_iterations",
    "lda_max_features",
    "error_scale",
    "error_decay_steps",
    "error_decay_power",
)


def parse_changes(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> {k: JSON value of v, or v as a string}; only ``SETTABLE`` keys."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        if key not in SETTABLE:
            raise ValueError(f"{key!r} cannot be changed without retraining; settable: {', '.join(SETTABLE)}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def derive(model: ModelFile, changes: dict[str, Any], parent: str) -> ModelFile:
    """A model with the same V_M and ``changes`` applied to its config, its provenance in ``meta``."""
    config = model.config.replace(**changes)
    history = [*model.meta.get("derivations", []), {"parent": parent, "parent_params_sha256": model.params_hash(),
                                                    "changes": changes}]  # fmt: skip
    return ModelFile(config=config, params=model.params, meta={**model.meta, "derivations": history})


def describe(model: ModelFile) -> str:
    """A few lines: the config, V_M's size and hash, how it was made."""
    n = sum(v.numel() for v in model.params.values())
    lines = [f"V_M: {n} numbers, sha256 {model.params_hash()}", "config:"]
    defaults = VSMLConfig()
    default = defaults.to_dict()
    for key, value in model.config.to_dict().items():
        mark = "" if default[key] == value else f"   (default {default[key]!r})"
        lines.append(f"  {key} = {value!r}{mark}")
    for key in ("method", "preset", "seed", "iterations", "derivations"):
        if key in model.meta:
            lines.append(f"{key}: {json.dumps(model.meta[key])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `vsml-model`."""
    ap = argparse.ArgumentParser(prog="vsml-model", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print a model file's config, V_M hash and provenance")
    show.add_argument("model", type=Path)
    put = sub.add_parser("set", help="write a copy with some config fields changed (V_M unchanged)")
    put.add_argument("model", type=Path)
    put.add_argument("out", type=Path)
    put.add_argument("changes", nargs="+", metavar="KEY=VALUE", help=f"settable: {', '.join(SETTABLE)}")
    args = ap.parse_args(argv)
    try:
        model = load_model(args.model)
        if args.command == "show":
            print(describe(model))
            return
        if args.out.resolve() == args.model.resolve():
            raise ValueError("OUT must differ from MODEL (the parent stays as it is)")
        new = derive(model, parse_changes(args.changes), args.model.name)
    except (ModelFileError, ValueError) as exc:
        raise SystemExit(f"vsml-model: {exc}") from exc
    save_model(args.out, new)
    print(f"wrote {args.out} (V_M sha256 {new.params_hash()[:16]}..., unchanged)")


if __name__ == "__main__":
    sys.exit(main())
