"""Export to PyTorch, import back, and translate with PyTorch alone.

One tiny demo model is trained once for the module (a minute on two CPU cores, most of it compilation);
every test reads it and writes its own export directories and workdirs under ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from run_support import captured_log
from safetensors.numpy import load_file

import torch_ref
from seq2seq_jax import cli
from seq2seq_jax.core.config import DataConfig, DecodeConfig, ExperimentConfig, ModelConfig, TrainConfig
from seq2seq_jax.training.export import ExportError, export_torch, import_torch
from seq2seq_jax.training.tasks import generate_task
from torch_ref.load import ExportFormatError
from torch_ref.translate import translate as torch_translate

REPO = Path(__file__).resolve().parents[1]
SIZE = 16
CONFIG = ExperimentConfig(
    model=ModelConfig(src_embed_size=SIZE, tgt_embed_size=SIZE, enc_hidden_size=SIZE, dec_hidden_size=SIZE,
                      attention_size=SIZE, readout_size=SIZE),
    # One bucket (width 64) means one compiled train program and one search program per decode setting.
    data=DataConfig(task_train_size=300, task_valid_size=40, batch_size=32, bucket_width=64),
    train=TrainConfig(max_steps=30, eval_every=15, save_every=15, log_every=15, valid_sample_size=20,
                      learning_rate=1e-2, warmup_steps=5),
)
# The same model with copy attention (which needs one joint vocabulary) and coverage attention, trained with the
# coverage loss: export, import and PyTorch translation must carry the copy gate and the coverage projection and
# compute the same mixture with the same per-hypothesis coverage.
COPY_CONFIG = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, copy_attention=True,
                                                                    coverage_attention=True),
                                  data=dataclasses.replace(CONFIG.data, joint_vocab=True),
                                  train=dataclasses.replace(CONFIG.train, coverage_loss_weight=1.0))
# Three-way tying (one joint vocabulary): one embedding matrix for the encoder, the decoder and the output layer,
# stored once in the export and re-tied by torch_ref.
TIED_CONFIG = dataclasses.replace(CONFIG, model=dataclasses.replace(CONFIG.model, tie_output_embedding=True,
                                                                    tie_src_tgt_embedding=True),
                                  data=dataclasses.replace(CONFIG.data, joint_vocab=True))
INPUTS = [src for src, _ in generate_task("dates", 200, seed=777)] + ["", "x", "", "  \t "]
BLOCK_JAX = """
import runpy, sys
BLOCKED = {"jax", "jaxlib", "flax", "optax", "orbax"}
class BlockJax:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, BlockJax())
try:
    import jax
except ImportError:
    print("jax import blocked", file=sys.stderr)
sys.argv = ["torch_ref.translate", *sys.argv[1:]]
runpy.run_module("torch_ref.translate", run_name="__main__", alter_sys=True)
"""


def _train_and_export(config: ExperimentConfig, root: Path) -> tuple[Path, Path]:
    from seq2seq_jax.training.trainer import train

    workdir = root / "run"
    train(config, workdir)
    return workdir, export_torch(workdir, root / "export")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(workdir, export_dir)`` of the tiny demo model, exported from its best checkpoint."""
    return _train_and_export(CONFIG, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def trained_copy(tmp_path_factory):
    """``(workdir, export_dir)`` of the tiny demo model with copy and coverage attention."""
    return _train_and_export(COPY_CONFIG, tmp_path_factory.mktemp("export_copy"))


@pytest.fixture(scope="module")
def trained_tied(tmp_path_factory):
    """``(workdir, export_dir)`` of the tiny demo model with three-way embedding tying."""
    return _train_and_export(TIED_CONFIG, tmp_path_factory.mktemp("export_tied"))


def _tensors(directory: Path) -> dict[str, np.ndarray]:
    return load_file(str(directory / "model.safetensors"))


def _copy_export(export_dir: Path, destination: Path) -> Path:
    import shutil

    shutil.copytree(export_dir, destination)
    return destination


def test_export_directory_contents(trained):
    workdir, export_dir = trained
    assert sorted(p.name for p in export_dir.iterdir()) == ["config.json", "meta.json", "model.safetensors",
                                                            "tokenizer"]
    assert sorted(p.name for p in (export_dir / "tokenizer").iterdir()) == ["src.tokenizer.json",
                                                                           "tgt.tokenizer.json"]
    config = json.loads((export_dir / "config.json").read_text())
    saved = ExperimentConfig.load(workdir / "config.json")
    assert config["format_version"] == 1
    assert config["model"] == saved.model.to_dict()
    assert ExperimentConfig.from_dict(config["experiment"]) == saved
    meta = json.loads((export_dir / "meta.json").read_text())
    assert meta["step"] == 30 and meta["checkpoint"] == "best"
    assert set(meta["metrics"]) >= {"valid_loss", "valid_bleu"}
    assert {"seq2seq-jax", "jax", "flax", "numpy", "torch", "safetensors"} <= set(meta["versions"])
    expected = torch_ref.Seq2Seq(saved.model).state_dict()
    tensors = _tensors(export_dir)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert not [p for p in export_dir.parent.iterdir() if ".tmp-" in p.name]


def test_export_refuses_a_non_empty_directory_unless_forced(trained, tmp_path):
    workdir, _ = trained
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_torch(workdir, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert cli.main(["export-torch", "--workdir", str(workdir), "--out", str(out)]) == 2
    assert cli.main(["export-torch", "--workdir", str(workdir), "--out", str(out), "--checkpoint", "15",
                     "--force"]) == 0
    assert not (out / "keep.txt").exists()
    assert json.loads((out / "meta.json").read_text())["step"] == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old directory left
    empty = tmp_path / "empty"
    empty.mkdir()
    export_torch(workdir, empty, checkpoint="latest")
    assert (empty / "model.safetensors").is_file()


def test_load_pretrained_is_strict_and_in_eval_mode(trained):
    _, export_dir = trained
    model, src_tok, tgt_tok = torch_ref.load_pretrained(export_dir)
    assert not model.training
    tensors = _tensors(export_dir)
    state_dict = model.state_dict()
    assert set(state_dict) == set(tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(state_dict[key].numpy(), value, err_msg=key)
    assert src_tok.vocab_size == model.config.src_vocab_size
    assert tgt_tok.vocab_size == model.config.tgt_vocab_size


def _break(directory: Path, how: str) -> str:
    """Damage an export copy; returns a pattern the error message must contain."""
    config_path, model_path = directory / "config.json", directory / "model.safetensors"
    if how == "missing_model":
        model_path.unlink()
        return "model.safetensors is missing"
    if how == "missing_config":
        config_path.unlink()
        return "config.json is missing"
    if how == "bad_json":
        config_path.write_text('{\n  "format_version": 1,\n  "model": {,\n}\n')
        return "config.json:3: invalid JSON"
    if how == "format_version":
        record = json.loads(config_path.read_text())
        record["format_version"] = 99
        config_path.write_text(json.dumps(record))
        return "config.json: unsupported format_version 99"
    if how == "corrupt_model":
        model_path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + bytes(64))
        return "model.safetensors: cannot read safetensors file"
    from safetensors.numpy import save_file

    tensors = _tensors(directory)
    if how == "wrong_key":
        tensors["readout.weights"] = tensors.pop("readout.weight")
        pattern = r"missing keys: \['readout.weight'\]; unexpected keys: \['readout.weights'\]"
    elif how == "wrong_shape":
        vocab = tensors["output.bias"].shape[0]
        tensors["output.bias"] = tensors["output.bias"][:-1]
        pattern = rf"output.bias: shape \({vocab - 1},\), expected \({vocab},\)"
    else:
        raise AssertionError(how)
    save_file(tensors, str(model_path))
    return pattern


@pytest.mark.parametrize("how", ["missing_model", "missing_config", "bad_json", "format_version", "corrupt_model",
                                 "wrong_key", "wrong_shape"])
def test_load_pretrained_errors_name_the_file_and_keys(trained, tmp_path, how):
    _, export_dir = trained
    directory = _copy_export(export_dir, tmp_path / "copy")
    pattern = _break(directory, how)
    with pytest.raises((ExportFormatError, FileNotFoundError), match=pattern) as error:
        torch_ref.load_pretrained(directory)
    assert str(directory) in str(error.value)


@pytest.mark.parametrize("model_kind", ["trained", "trained_copy", "trained_tied"])
def test_export_import_export_gives_identical_tensors(request, model_kind, tmp_path):
    _, export_dir = request.getfixturevalue(model_kind)
    if model_kind == "trained_copy":
        assert {"copy_gate.weight", "copy_gate.bias", "attention.coverage_proj.weight"} <= set(_tensors(export_dir))
    imported = tmp_path / "imported"
    assert cli.main(["import-torch", "--src", str(export_dir), "--workdir", str(imported)]) == 0
    assert ExperimentConfig.load(imported / "config.json") == ExperimentConfig.from_dict(
        json.loads((export_dir / "config.json").read_text())["experiment"])
    assert cli.main(["export-torch", "--workdir", str(imported), "--out", str(tmp_path / "again")]) == 0
    first, second = _tensors(export_dir), _tensors(tmp_path / "again")
    assert set(first) == set(second)
    for key in first:
        assert first[key].dtype == second[key].dtype
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert (export_dir / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "again" / "meta.json").read_text())["step"] == 30
    # A workdir that already holds a run is refused, and nothing in it changes.
    before = sorted(p.relative_to(imported) for p in imported.rglob("*"))
    with pytest.raises(ExportError, match="config.json exists"):
        import_torch(export_dir, imported)
    assert sorted(p.relative_to(imported) for p in imported.rglob("*")) == before


def test_import_then_train_continues_from_the_imported_step(trained, tmp_path):
    from seq2seq_jax.training.checkpoint import Checkpointer
    from seq2seq_jax.training.trainer import train

    _, export_dir = trained
    imported = tmp_path / "imported"
    assert import_torch(export_dir, imported) == 30
    with Checkpointer(imported, keep=3) as checkpoints:
        assert checkpoints.all_steps() == [30]
        _, _, extra = checkpoints.restore(30)
    assert "data_state" not in extra and extra["imported_from"]["step"] == 30 and "config" in extra
    config = ExperimentConfig.load(imported / "config.json")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=32, eval_every=1000))
    with captured_log() as logs:
        train(config, imported)
    assert any("resumed from step 30" in line for line in logs), logs
    with Checkpointer(imported, keep=3) as checkpoints:
        assert checkpoints.latest_step() == 32


def test_bare_pt_state_dict_with_tied_embedding_imports_and_loads(trained, tmp_path):
    """A ``torch.save(model.state_dict())`` file next to a config.json and tokenizer/: import, export (the tied
    tensor stored once), and load_pretrained re-ties it."""
    import shutil

    _, export_dir = trained
    base = ExperimentConfig.load(trained[0] / "config.json")
    config = dataclasses.replace(base, model=dataclasses.replace(base.model, tie_output_embedding=True))
    torch.manual_seed(0)
    model = torch_ref.Seq2Seq(config.model).eval()
    source = tmp_path / "bare"
    source.mkdir()
    torch.save(model.state_dict(), source / "weights.pt")
    config.save(source / "config.json")
    shutil.copytree(export_dir / "tokenizer", source / "tokenizer")

    workdir = tmp_path / "workdir"
    assert import_torch(source / "weights.pt", workdir) == 0
    out = export_torch(workdir, tmp_path / "tied_export", checkpoint="latest")
    tensors = _tensors(out)
    assert "output.weight" not in tensors and "tgt_embed.weight" in tensors
    loaded, _, _ = torch_ref.load_pretrained(out)
    assert loaded.output.weight is loaded.tgt_embed.weight
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)


def _jax_translations(workdir: Path, decode: DecodeConfig):
    from seq2seq_jax.decoding.translate import Translator
    from seq2seq_jax.training.workdir import load_trained

    model = load_trained(workdir, "best")
    translator = Translator(model.graphdef, model.params, model.src_tokenizer, model.tgt_tokenizer, decode,
                            model.config.data.bucket_width)
    return translator.translate(INPUTS)


@pytest.mark.parametrize("model_kind", ["trained", "trained_copy", "trained_tied"])
@pytest.mark.parametrize("beam_size", [1, 5])
def test_torch_translate_matches_jax(request, model_kind, beam_size):
    workdir, export_dir = request.getfixturevalue(model_kind)
    decode = dataclasses.replace(ExperimentConfig.load(workdir / "config.json").decode, beam_size=beam_size,
                                 n_best=beam_size, batch_size=64)
    jax_results = _jax_translations(workdir, decode)
    model, src_tok, tgt_tok = torch_ref.load_pretrained(export_dir)
    # A different batch size on the torch side: the output must not depend on batching.
    torch_results = torch_translate(model, src_tok, tgt_tok, INPUTS, dataclasses.replace(decode, batch_size=23))
    assert len(torch_results) == len(jax_results) == len(INPUTS)
    same = sum([h.text for h in t[:1]] == [h.text for h in j[:1]]
               for t, j in zip(torch_results, jax_results, strict=True))
    assert same >= 0.99 * len(INPUTS), f"{same}/{len(INPUTS)} identical lines"
    worst = 0.0
    for line, torch_hyps, jax_hyps in zip(INPUTS, torch_results, jax_results, strict=True):
        assert len(torch_hyps) == len(jax_hyps) == (beam_size if line.strip() else 0)  # none for a blank line
        for torch_hyp, jax_hyp in zip(torch_hyps, jax_hyps, strict=True):
            if torch_hyp.tokens == jax_hyp.tokens:
                worst = max(worst, abs(torch_hyp.score - jax_hyp.score))
    assert worst < 1e-4
    print(f"beam {beam_size}: {same}/{len(INPUTS)} identical lines, largest score difference {worst:.2e}")


def test_three_way_tied_export_stores_one_embedding_and_loads_it_tied(trained_tied):
    workdir, export_dir = trained_tied
    tensors = _tensors(export_dir)
    assert "tgt_embed.weight" in tensors and not {"src_embed.weight", "output.weight"} & set(tensors)
    meta = json.loads((export_dir / "meta.json").read_text())
    assert meta["tied_output_embedding_stored_once"] and meta["tied_src_tgt_embedding_stored_once"]
    model, src_tok, tgt_tok = torch_ref.load_pretrained(export_dir)
    assert model.src_embed.weight is model.tgt_embed.weight is model.output.weight
    np.testing.assert_array_equal(model.src_embed.weight.detach().numpy(), tensors["tgt_embed.weight"])
    assert src_tok.vocab_size == tgt_tok.vocab_size == model.config.src_vocab_size  # one joint vocabulary
    assert ExperimentConfig.load(workdir / "config.json").model.tie_src_tgt_embedding


def test_retie_refuses_a_tied_tensor_that_differs():
    from seq2seq_jax.core.export_format import retie

    config = TIED_CONFIG.model
    embedding = np.arange(6.0).reshape(3, 2)
    tied = retie({"tgt_embed.weight": embedding}, config, "weights.pt")
    assert tied["src_embed.weight"] is tied["output.weight"] is embedding
    with pytest.raises(ExportFormatError, match=r"weights.pt: src_embed.weight differs .*tie_src_tgt_embedding"):
        retie({"tgt_embed.weight": embedding, "src_embed.weight": embedding + 1}, config, "weights.pt")


@pytest.mark.parametrize("model_kind", ["trained", "trained_tied"])
def test_torch_translate_runs_without_jax(request, model_kind, tmp_path):
    trained = request.getfixturevalue(model_kind)
    _, export_dir = trained
    lines = INPUTS[:20] + ["", "March 3, 2021", ""]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run([sys.executable, "-c", BLOCK_JAX, str(export_dir), "--beam-size", "2"],
                               input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=tmp_path,
                               env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "jax import blocked" in completed.stderr
    out_lines = completed.stdout.split("\n")
    assert out_lines[-1] == "" and len(out_lines) - 1 == len(lines)
    model, src_tok, tgt_tok = torch_ref.load_pretrained(export_dir)
    decode = dataclasses.replace(ExperimentConfig.load(trained[0] / "config.json").decode, beam_size=2)
    expected = [hyps[0].text if hyps else "" for hyps in torch_translate(model, src_tok, tgt_tok, lines, decode)]
    assert out_lines[:-1] == expected
    assert all(out == "" for line, out in zip(lines, out_lines, strict=False) if not line.strip())


@pytest.mark.parametrize("settings", [["--beam-size", "1"], ["--beam-size", "3", "--n-best", "2"],
                                      ["--beam-size", "3", "--n-best", "2", "--one-line-per-input"]],
                         ids=["greedy", "n-best", "n-best-one-line"])
def test_blank_lines_are_empty_lines_in_torch_ref_translate_as_in_seq2seq_translate(trained, tmp_path, capsys,
                                                                                     settings):
    """Both translators write the same lines: N per input with --n-best N (a blank input's are empty), or with
    --one-line-per-input one line per input, text and score per hypothesis."""
    from torch_ref.translate import main as torch_main

    workdir, export_dir = trained
    lines = ["", "March 3, 2021", " ", "\t", "14 July 1789", ""]
    one_line = "--one-line-per-input" in settings
    per_input = 2 if "--n-best" in settings and not one_line else 1
    fields = 4 if "--n-best" in settings and one_line else 1
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert torch_main([str(export_dir), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "torch.txt"),
                       *settings]) == 0
    assert cli.main(["translate", "--workdir", str(workdir), "--src", str(tmp_path / "in.txt"), "--output",
                     str(tmp_path / "jax.txt"), *settings]) == 0
    capsys.readouterr()
    outputs = {}
    for name in ("torch", "jax"):
        written = (tmp_path / f"{name}.txt").read_text(encoding="utf-8").split("\n")
        assert written[-1] == "" and len(written) - 1 == len(lines) * per_input
        outputs[name] = [written[i * per_input:(i + 1) * per_input] for i in range(len(lines))]
        for line, group in zip(lines, outputs[name], strict=True):
            assert all((out == "") if not line.strip() else len(out.split("\t")) == fields for out in group)
    blank = [i for i, line in enumerate(lines) if not line.strip()]
    assert [outputs["torch"][i] for i in blank] == [outputs["jax"][i] for i in blank] == [[""] * per_input] * len(blank)
    if fields == 1:  # scores differ in the last digits between frameworks; the texts do not
        assert outputs["torch"] == outputs["jax"]
