"""Export a workdir to the directory PyTorch users load, and import one (or a bare ``torch_ref`` state_dict)
back into a JAX workdir.

The layout, its version check, the strict state_dict check and the re-tying of tensors tied to the target
embedding (stored once, as ``tgt_embed.weight``) are ``seq2seq_jax.core.export_format``, shared with ``torch_ref``;
README, "The export directory". Torch is imported only to read a ``torch.save``-d ``.pt`` file: safetensors of
every dtype (bfloat16 as ``ml_dtypes.bfloat16``) go through ``safetensors.numpy``. Both directions write into
a temporary sibling directory renamed into place at the end, so a failure never leaves a half-written export
or workdir that looks complete.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from seq2seq_jax.core.config import ConfigError
from seq2seq_jax.core.export_format import (
    CONFIG_FILE,
    FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    TOKENIZER_DIR,
    read_export_config,
    retie,
    tied_keys,
)
from seq2seq_jax.core.export_format import ExportFormatError as ExportError
from seq2seq_jax.core.install_hint import install_command
from seq2seq_jax.core.json_files import read_json
from seq2seq_jax.training.staging import is_nonempty_dir, staged_directory
from seq2seq_jax.training.workdir_lock import workdir_lock

_VERSIONED_PACKAGES = ("seq2seq-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch",
                       "safetensors", "sentencepiece")


# ---------------------------------------------------------------------------------------------------- helpers


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries an export depends on (without importing them)."""
    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    if "seq2seq-jax" not in versions:
        import seq2seq_jax

        versions["seq2seq-jax"] = seq2seq_jax.__version__
    return versions


def _write_json(path: Path, record: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str | Path, tied: Collection[str]) -> None:
    """Write a numpy ``torch_ref`` state_dict as safetensors, without the ``tied`` keys (those a model ties to
    ``tgt_embed.weight``, ``tied_keys``: readers re-tie them)."""
    from safetensors.numpy import save_file

    arrays = {key: np.ascontiguousarray(value) for key, value in state_dict.items() if key not in tied}
    # One metadata entry: safetensors orders several at random (non-reproducible bytes).
    save_file(arrays, str(path), metadata={"format": "torch_ref"})


def read_state_dict_file(path: str | Path) -> dict[str, np.ndarray]:
    """A ``torch_ref`` state_dict as numpy arrays from ``.safetensors`` or a ``torch.save``-d ``.pt``/``.pth``
    (which needs torch: without it, an ``ExportError`` that says to install the torch extra)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"state_dict file {path} is missing")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as error:  # safetensors raises SafetensorError / OSError on a corrupt file
            raise ExportError(f"{path}: cannot read safetensors file: {error}") from None
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            import torch
        except ModuleNotFoundError:
            raise ExportError(f"{path}: reading a torch.save file needs PyTorch: install the torch extra "
                              f"({install_command('torch')}), or import a .safetensors file") from None
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:
            raise ExportError(f"{path}: cannot read PyTorch file: {error}") from None
        if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise ExportError(f"{path}: expected a state_dict (a dict of tensors saved by "
                              "torch.save(model.state_dict()))")
        return {str(key): _torch_to_numpy(value) for key, value in loaded.items()}
    raise ExportError(f"{path}: unknown state_dict file type {path.suffix!r}; use .safetensors or .pt")


def _torch_to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


# ---------------------------------------------------------------------------------------------------- export


def export_torch(workdir: str | Path, out_dir: str | Path, checkpoint: str | int = "best",
                 force: bool = False) -> Path:
    """Write the export directory ``out_dir`` from ``checkpoint`` (``"best"``, ``"latest"`` or a step) of
    ``workdir``. A non-empty ``out_dir`` is refused unless ``force`` (then it is replaced). Returns ``out_dir``.
    """
    import jax

    from seq2seq_jax.core.tokenizer import tokenizer_files
    from seq2seq_jax.model.convert import to_torch_state_dict
    from seq2seq_jax.training.workdir import Workdir, load_trained

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory")
    if is_nonempty_dir(out_dir) and not force:
        raise ExportError(f"{out_dir} is not empty; choose a new --out directory or pass --force to replace it")
    trained = load_trained(workdir, checkpoint)
    config = trained.config
    params = jax.tree.map(np.asarray, jax.device_get(trained.params))
    state_dict = to_torch_state_dict(params, config.model)

    with staged_directory(out_dir, replace=force) as temporary:
        _write_json(temporary / CONFIG_FILE, {"format_version": FORMAT_VERSION, "model": config.model.to_dict(),
                                              "experiment": config.to_dict()})
        save_state_dict(state_dict, temporary / MODEL_FILE, tied_keys(config.model))
        tokenizer_out = temporary / TOKENIZER_DIR
        tokenizer_out.mkdir()
        for path in tokenizer_files(Workdir(Path(workdir)).tokenizer_dir):
            shutil.copy2(path, tokenizer_out / path.name)
        _write_json(temporary / META_FILE, {
            "format_version": FORMAT_VERSION,
            "step": trained.step,
            "checkpoint": str(checkpoint),
            "metrics": dict(trained.metrics or {}),
            "source_workdir": str(Path(workdir).absolute()),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tied_output_embedding_stored_once": bool(config.model.tie_output_embedding),
            "tied_src_tgt_embedding_stored_once": bool(config.model.tie_src_tgt_embedding),
            "versions": library_versions(),
        })
    return out_dir


# ---------------------------------------------------------------------------------------------------- import


def _locate_source(src: Path, config_path: str | Path | None) -> tuple[Path, Path, Path, Path | None]:
    """``(state_dict file, config file, tokenizer dir, meta file or None)`` for an export dir or a bare file."""
    if src.is_dir():
        state_file, base = src / MODEL_FILE, src
        if not state_file.is_file():
            candidates = sorted(p for p in src.iterdir() if p.suffix in (".pt", ".pth"))
            if len(candidates) != 1:
                raise ExportError(f"{src}: no {MODEL_FILE} (and not exactly one .pt state_dict file) in it")
            state_file = candidates[0]
    elif src.is_file():
        state_file, base = src, src.parent
    else:
        raise ExportError(f"{src} does not exist")
    config_file = Path(config_path) if config_path else base / CONFIG_FILE
    if not config_file.is_file():
        raise ExportError(f"{config_file} is missing: an import needs the model config "
                          "(an export config.json or a workdir config.json; pass --config)")
    tokenizer_dir = base / TOKENIZER_DIR
    if not tokenizer_dir.is_dir() and config_path:
        tokenizer_dir = Path(config_path).parent / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise ExportError(f"{base / TOKENIZER_DIR} is missing: an import needs the tokenizer files "
                          "(src.tokenizer.json, tgt.tokenizer.json, ...)")
    meta_file = base / META_FILE
    return state_file, config_file, tokenizer_dir, meta_file if meta_file.is_file() else None


def import_torch(src: str | Path, workdir: str | Path, config: str | Path | None = None) -> int:
    """Create the JAX workdir ``workdir`` from an export directory, or from a bare ``torch_ref`` state_dict
    (``.safetensors`` or ``.pt`` saved by ``torch.save(model.state_dict())``) with a ``config.json`` (beside it
    or given as ``config``) and a ``tokenizer/`` directory beside it.

    The workdir gets ``config.json``, ``tokenizer/`` and one checkpoint at the exported step (0 without a
    ``meta.json``) holding the converted parameters and a fresh optimizer state; its extra has ``config`` and
    ``imported_from`` and no data-iterator state, so ``seq2seq train`` continues from that step with the data
    starting afresh. A non-empty ``workdir`` is refused; it is locked (``workdir_lock``) from the start. Returns
    the step.
    """
    src, workdir = Path(src), Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ExportError(f"{workdir} exists and is not a directory")
    with workdir_lock(workdir, "seq2seq import-torch"):
        return _import_into(src, workdir, config)


def _import_into(src: Path, workdir: Path, config: str | Path | None) -> int:
    import jax
    import jax.numpy as jnp

    from seq2seq_jax.core.tokenizer import load_tokenizers, tokenizer_files
    from seq2seq_jax.model.convert import flatten_params, from_torch_state_dict, unflatten_params
    from seq2seq_jax.training.steps import init_train_state, make_optimizer
    from seq2seq_jax.training.workdir import Workdir, fresh_train_state

    if (workdir / CONFIG_FILE).exists():
        raise ExportError(f"{workdir / CONFIG_FILE} exists: {workdir} already holds a run; import into a new "
                          "--workdir")
    if is_nonempty_dir(workdir):
        raise ExportError(f"{workdir} is not empty; import into a new (or empty) --workdir")
    state_file, config_file, tokenizer_dir, meta_file = _locate_source(src, config)
    experiment = read_export_config(config_file)
    model_config = experiment.model
    try:
        model_config.require_resolved()
    except ConfigError as error:
        raise ExportError(f"{config_file}: {error}") from None
    src_tok, tgt_tok = load_tokenizers(tokenizer_dir)
    if (src_tok.vocab_size, tgt_tok.vocab_size) != (model_config.src_vocab_size, model_config.tgt_vocab_size):
        raise ExportError(f"{tokenizer_dir}: tokenizer vocabulary sizes ({src_tok.vocab_size}, "
                          f"{tgt_tok.vocab_size}) differ from {config_file}'s model "
                          f"({model_config.src_vocab_size}, {model_config.tgt_vocab_size})")
    meta = read_json(meta_file, ExportError) if meta_file else {}
    if not isinstance(meta, dict) or not isinstance(meta.get("step", 0), int) or meta.get("step", 0) < 0:
        raise ExportError(f"{meta_file}: expected a JSON object with a non-negative integer 'step'")
    step = int(meta.get("step", 0))
    recorded = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    metrics = {str(k): float(v) for k, v in recorded.items() if isinstance(v, (int, float))}

    state_dict = retie(read_state_dict_file(state_file), model_config, str(state_file))
    try:
        flat = flatten_params(from_torch_state_dict(state_dict, model_config))
    except ValueError as error:
        raise ExportError(f"{state_file}: {error}") from None
    _, fresh = fresh_train_state(experiment)
    fresh_flat = flatten_params(fresh.params)
    params = unflatten_params({path: jnp.asarray(flat[path], dtype=fresh_flat[path].dtype) for path in fresh_flat})
    if jax.tree.structure(params) != jax.tree.structure(fresh.params):
        raise ExportError(f"{state_file}: internal error: converted parameters do not have the model's structure")
    state = init_train_state(params, make_optimizer(experiment.train), experiment.train.seed)
    state = state.replace(step=jnp.asarray(step, jnp.int32))

    with staged_directory(workdir) as temporary:
        run = Workdir(temporary)
        run.tokenizer_dir.mkdir()
        for path in tokenizer_files(tokenizer_dir):
            shutil.copy2(path, run.tokenizer_dir / path.name)
        extra: dict[str, Any] = {"config": experiment.to_dict(),
                                 "imported_from": {"path": str(src.absolute()), "state_dict": str(state_file),
                                                   "step": step, "metrics": metrics}}
        best_metric = experiment.train.best_metric
        if best_metric in metrics:
            extra["best"] = {"value": metrics[best_metric], "step": step, "bad_evals": 0}
        with run.checkpointer(experiment) as checkpoints:
            checkpoints.save(step, state, extra=extra, metrics=metrics or None, force=True)
        experiment.save(run.config_path)
    return step


__all__ = ["ExportError", "export_torch", "import_torch", "read_export_config", "read_state_dict_file",
           "save_state_dict", "retie", "library_versions", "FORMAT_VERSION"]
