"""Crafted inputs for the hardening tests: tiny exported models and edited copies of them."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import onnx

from vsml_export.exporter import ExportOptions, export_model, seal_step
from vsml_runtime import format as fmt
from vsml_train.model.config import VSMLConfig
from vsml_train.model.model_file import ModelFile, save_model
from vsml_train.model.params import init_params


def export_tiny(folder: Path, config: VSMLConfig | None = None, seed: int = 0, name: str = "model") -> Path:
    """A model.pt with random V_M exported (unverified) to folder/name.onnx; returns the step graph's path."""
    config = config or VSMLConfig()
    save_model(folder / f"{name}.pt", ModelFile(config, init_params(config, seed), {}))
    return export_model(folder / f"{name}.pt", folder / f"{name}.onnx", ExportOptions(verify=False)).step_path


def meta_of(graph: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in graph.metadata_props}


def set_meta(graph: onnx.ModelProto, key: str, value: str) -> None:
    """Set (or add) one metadata entry of a graph."""
    for p in graph.metadata_props:
        if p.key == key:
            p.value = value
            return
    entry = graph.metadata_props.add()
    entry.key, entry.value = key, value


def drop_meta(graph: onnx.ModelProto, key: str) -> None:
    kept = [(p.key, p.value) for p in graph.metadata_props if p.key != key]
    del graph.metadata_props[:]
    for k, v in kept:
        set_meta(graph, k, v)


def edited_copy(
    step: Path, dst: Path, edit: Callable[[onnx.ModelProto], None], *, reseal: bool = True, raw: bool = False
) -> Path:
    """dst (+ its init graph, copied): ``step`` with ``edit`` applied to its ModelProto.

    ``reseal``: record a fresh digest (a crafted but self-consistent file);
    otherwise the old digest stays (an edit after export). ``raw``: write
    without re-sealing or touching the digest at all.
    """
    graph = onnx.load(step)
    edit(graph)
    if raw or not reseal:
        data = graph.SerializeToString()
    else:
        drop_meta(graph, fmt.K_STEP_SHA256)
        data = seal_step(graph)
    dst.write_bytes(data)
    init_src = fmt.init_path_for(step)
    init_dst = fmt.init_path_for(dst)
    if init_dst != init_src:
        shutil.copyfile(init_src, init_dst)
    return dst
