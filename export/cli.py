"""`vsml-export model.pt model.onnx`: thin CLI over ``vsml_export.exporter.export_model``."""

from __future__ import annotations

import sys

import click

from .exporter import _UNSET, OPSETS, ExportError, ExportOptions, export_model


def _parse_clip(value: str | None) -> object:
    if value is None:
        return _UNSET
    if value.lower() in ("none", "off"):
        return None
    try:
        bound = float(value)
    except ValueError as exc:
        raise click.BadParameter(f"expected a number > 0 or 'none', got {value!r}") from exc
    if not bound > 0:
        raise click.BadParameter(f"expected a number > 0 or 'none', got {value!r}")
    return bound


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_pt", type=click.Path(dir_okay=False))
@click.argument("out_onnx", type=click.Path(dir_okay=False))
@click.option("--opset", type=click.IntRange(min(OPSETS), max(OPSETS)), default=18, show_default=True)
@click.option(
    "--exporter",
    type=click.Choice(["legacy", "dynamo"]),
    default="legacy",
    show_default=True,
    help="torch.onnx exporter: legacy (TorchScript tracer, fast) or dynamo (torch.export, slow to export).",
)
@click.option("--clip", "clip", default=None, help="State clip bound (a number, or 'none'); default: the model's.")
@click.option(
    "--batch-average",
    type=click.Choice(["none", "full", "half"]),
    default=None,
    help="State averaging over the examples of one step; default: the model's.",
)
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime vs PyTorch check (not recommended).")
@click.option("--untuned", is_flag=True, help="Trace the plain blocked step instead of the export-tuned impl.")
def main(
    model_pt: str,
    out_onnx: str,
    opset: int,
    exporter: str,
    clip: str | None,
    batch_average: str | None,
    no_verify: bool,
    untuned: bool,
) -> None:
    """Export MODEL_PT (a VSML model file) to OUT_ONNX plus its init graph OUT.init.onnx.

    The step graph runs one VSML step: inputs are the state tensors, x [P, E, A]
    and y [P, E] (int64 labels, -1 = no label); outputs the new state and the
    logits [P, E, B]. Both files are needed by vsml_runtime.Learner.
    """
    options = ExportOptions(
        opset=opset,
        exporter=exporter,  # type: ignore[arg-type]
        clip=_parse_clip(clip),
        batch_average=batch_average if batch_average is not None else _UNSET,
        tuned=not untuned,
        verify=not no_verify,
    )
    try:
        result = export_model(model_pt, out_onnx, options)
    except ExportError as exc:
        click.echo(f"vsml-export: error: {exc}", err=True)
        sys.exit(1)
    cfg = result.config
    click.echo(f"wrote {result.step_path} (step) and {result.init_path} (initial state)")
    click.echo(
        f"  V_M sha256 {result.params_sha256[:16]}..., clip {cfg.clip}, batch averaging {cfg.batch_average}, "
        f"opset {opset}, exporter {exporter}"
    )
    if result.max_verify_error is not None:
        click.echo(f"  verified against PyTorch: max |difference| {result.max_verify_error:.2g}")
