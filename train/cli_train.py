"""`vsml-train`: meta-learn V_M and write ``model.pt`` (docs/model.md §6).

    vsml-train --method {clone,es,bptt,cmaes} --preset NAME [--KEY VALUE ...] --out DIR
    vsml-train --resume --out DIR [--iterations N]        # continue a run

Every option of the model, the method, its task mix and the run can be set
with ``--KEY VALUE`` (``--show-options`` lists them for a method / preset;
unknown keys are errors). A thin layer: parse, compose the ``RunSpec``
(``methods.registry``), call ``methods.runner.train``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .evaluation.meta_test import meta_test_evaluator
from .methods import registry
from .methods.checkpoint import CheckpointError, load_checkpoint
from .methods.runner import CHECKPOINT, RunOptions, limit_numpy_threads, train

EPILOG = """\b
Options of the model, the method and the run go as --KEY VALUE, e.g.
  --lr 0.002 --tasks.steps 200 --project-dim 32 --iterations 500 --device cuda
KEY is a field name (dashes or underscores) or its dotted path
(model.X, options.X, tasks.X, run.X); --show-options lists them all.
Booleans: true/false; lists: comma-separated; none for no value.
"""


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["--a", "1", "--b=x", "--flag"]`` -> {"a": "1", "b": "x", "flag": "true"}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise click.UsageError(f"expected --KEY VALUE, got {tok!r}")
        key, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        if key in out:
            raise click.UsageError(f"option --{key} given twice")
        out[key] = value
        i += 1
    return out


def _spec_from_checkpoint(out: Path, overrides: dict[str, str]) -> registry.RunSpec:
    """Rebuild the spec a checkpoint was written with; only run options may change."""
    ckpt = load_checkpoint(out / CHECKPOINT)
    ident, method = ckpt["spec"], ckpt["method"]
    run_tables = dict(ckpt.get("run", {}))
    paths = registry.option_paths(method)
    for key, value in overrides.items():
        path = registry.resolve_key(method, key)
        if not path.startswith("run."):
            raise click.UsageError(f"--{key}: only run options may change when resuming (this is {path})")
        run_tables[path[4:]] = registry.parse_value(value, paths[path])
    m = registry.get_method(method)
    from .model.config import VSMLConfig

    return registry.RunSpec(
        method=method,
        config=VSMLConfig.from_dict(ident["model"]),
        options=registry.from_plain(m.options_cls, ident["options"], "options"),
        run=registry.from_plain(RunOptions, run_tables, "run"),
        model_overrides={},
    )


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": ["-h", "--help"]},
    epilog=EPILOG,
)
@click.option("--method", type=click.Choice(sorted(registry.METHODS)), help="Meta-training method.")
@click.option("--preset", help="Preset name (train/presets/NAME.toml, shipped in the package) or file.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (model.pt, checkpoint.pt, metrics.jsonl).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option(
    "--init",
    "init_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Start from this model.pt (its config too).",
)
@click.option("--list-presets", is_flag=True, help="List the presets and exit.")
@click.option("--show-options", is_flag=True, help="Print every option with its resolved value and exit.")
@click.pass_context
def cli(
    ctx: click.Context,
    method: str | None,
    preset: str | None,
    out: Path | None,
    resume: bool,
    init_path: Path | None,
    list_presets: bool,
    show_options: bool,
) -> None:
    """Meta-learn the shared LSTM parameters V_M and write DIR/model.pt."""
    if list_presets:
        for name in registry.list_presets():
            data = registry.read_preset(name)
            click.echo(f"{name:16s} {data.get('method', '?'):6s} {data.get('description', '')}")
        return
    overrides = parse_overrides(ctx.args)
    init = None
    if resume and out is None:
        raise click.UsageError("--resume needs --out DIR: the folder of the run to continue")
    if resume and not (out / CHECKPOINT).exists():
        raise click.UsageError(
            f"--resume: no checkpoint in {out} ({CHECKPOINT} is missing); start a run there with "
            "--method or --preset (without --resume), or pass the --out of an existing run"
        )
    if not resume and not show_options and out is not None and (out / CHECKPOINT).exists():
        raise click.UsageError(
            f"{out} already holds a run ({out / CHECKPOINT}): add --resume to continue it, or choose another --out"
        )
    try:
        if resume and out is not None and not method and not preset:
            spec = _spec_from_checkpoint(out, overrides)
        else:
            base = None
            if init_path is not None:
                from .model.model_file import load_model

                init = load_model(init_path)
                base = init.config
            spec = registry.build_spec(method, preset, overrides, string_values=True, base_config=base)
    except (ValueError, CheckpointError) as exc:
        raise click.UsageError(str(exc)) from exc
    if show_options:
        tables = {
            "model": spec.config.to_dict(),
            "options": registry.to_plain(spec.options),
            "run": registry.to_plain(spec.run),
        }
        for part, values in tables.items():
            _echo_table(part, values)
        return
    if out is None:
        raise click.UsageError("--out DIR is required")
    try:
        status = run_spec(spec, out, resume=resume, init=init, preset=preset)
    except CheckpointError as exc:  # e.g. resuming with other options than the checkpoint's
        raise click.ClickException(str(exc)) from exc
    sys.exit(status)


def _echo_table(prefix: str, values: dict[str, Any]) -> None:
    for k, v in values.items():
        if isinstance(v, dict):
            _echo_table(f"{prefix}.{k}", v)
        else:
            click.echo(f"{prefix}.{k} = {v!r}")


def run_spec(
    spec: registry.RunSpec, out: Path, *, resume: bool = False, init: Any = None, preset: str | None = None
) -> int:
    """Train ``spec`` into ``out``; returns the exit status (0 done, 130 interrupted)."""
    from .methods.distributed import init_from_env, leave

    device = spec.run.device
    world = init_from_env(device)
    if world.size > 1 and not registry.get_method(spec.method).distributed:
        raise click.UsageError(f"method {spec.method!r} runs in one process; only es and cmaes spread over processes")
    limit_numpy_threads(1)
    params = None
    identity = spec.identity()
    if init is not None:
        params = init.params
        identity["init_sha256"] = init.params_hash()
    elif resume and (out / CHECKPOINT).exists():
        # a run started with --init resumes without it: the checkpoint holds the trainer's
        # whole state, so the starting V_M no longer matters (but stays part of the identity)
        stored = load_checkpoint(out / CHECKPOINT)["spec"].get("init_sha256")
        if stored is not None:
            identity["init_sha256"] = stored
    trainer = registry.make_trainer(spec, params)
    evaluate = None
    if spec.run.eval_every >= 0 and spec.run.eval_datasets and world.is_main:
        evaluate = meta_test_evaluator(spec.config, spec.run, device)
    tasks = getattr(spec.options, "tasks", None)
    meta = {"data": registry.to_plain(tasks) if tasks is not None else spec.method, "spec": identity, "preset": preset}
    result = train(trainer, spec.run, out, spec=identity, resume=resume, evaluate=evaluate, meta=meta, world=world)
    leave(world)
    if not world.is_main:
        return 0
    if result.interrupted:
        click.echo(
            f"interrupted after iteration {result.iteration}; checkpoint saved in {out}. Continue with:\n"
            f"  vsml-train --resume --out {out}",
            err=True,
        )
        return 130
    shown = {k: round(v, 4) for k, v in result.metrics.items() if k == "loss" or k.startswith("meta_test/")}
    click.echo(f"wrote {result.model_path}  {shown}")
    return 0


def main() -> None:
    """Entry point of `vsml-train`."""
    cli()


if __name__ == "__main__":
    main()
