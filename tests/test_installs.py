"""The two installs (pyproject extras ``jax`` and ``torch``), checked cheaply in this environment: subprocesses
in which the other framework's modules cannot be imported (as in an environment without them) show that the
PyTorch side never imports JAX, that the JAX side (training, translation, export-torch and import-torch of
``.safetensors``, bfloat16 included) never imports torch, and that a missing extra is named in one line.
``scripts/check_installs.sh`` (run by ``scripts/test.sh``) does the same with real environments.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from run_support import tiny_config
from safetensors.torch import save_file as save_torch

REPO = Path(__file__).resolve().parents[1]
JAX_MODULES = ("jax", "jaxlib", "flax", "optax", "orbax")
JAX_EXTRA = JAX_MODULES + ("ml_dtypes", "sacrebleu", "rouge_score", "tqdm", "tensorboardX", "matplotlib")

# Run the code of sys.argv[2] (a file) with the top-level modules listed in sys.argv[1] (comma-separated)
# missing: importing one raises ModuleNotFoundError, as in an environment without them.
BLOCKING_RUNNER = """
import runpy, sys
BLOCKED = set(sys.argv[1].split(","))
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Missing())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_without(modules: tuple[str, ...], code: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` (a script, given ``args``) in a fresh interpreter where ``modules`` cannot be imported."""
    script = tmp_path / f"script_{len(list(tmp_path.glob('script_*')))}.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.run([sys.executable, "-c", BLOCKING_RUNNER, ",".join(modules), str(script), *args],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)


def test_shared_and_torch_side_import_no_jax(tmp_path):
    code = f"""
import sys
import seq2seq_jax.core.search_settings, seq2seq_jax.core.export_format, seq2seq_jax.core.json_files
import seq2seq_jax.core.pair_scores, seq2seq_jax.core.tokens
assert "torch" not in sys.modules, "seq2seq_jax.core imported torch"
import seq2seq_jax.core.config, seq2seq_jax.core.reading, seq2seq_jax.core.encoding, seq2seq_jax.core.batching
import seq2seq_jax.core.tokenizer
import torch_ref, torch_ref.ensemble, torch_ref.load, torch_ref.model, torch_ref.score, torch_ref.search
import torch_ref.translate
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {JAX_EXTRA!r})
print(",".join(loaded))
"""
    # Everything of the jax extra is missing, as in `pip install .[torch]`.
    completed = run_without(JAX_EXTRA, code, tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == ""
    # And the shared package alone needs neither framework.
    completed = run_without(JAX_EXTRA + ("torch",), "import seq2seq_jax.core.export_format, "
                            "seq2seq_jax.core.search_settings, seq2seq_jax.core.tokenizer, seq2seq_jax.core.batching",
                            tmp_path)
    assert completed.returncode == 0, completed.stderr


@pytest.mark.parametrize("command", [
    ["train", "--workdir", "W"], ["translate", "--workdir", "W"], ["evaluate", "--workdir", "W", "--src", "s",
                                                                    "--ref", "r"],
    ["plot", "--workdir", "W"], ["export-torch", "--workdir", "W", "--out", "E"],
    ["import-torch", "--src", "E", "--workdir", "W2"], ["average", "--workdir", "W", "--out", "W2"]])
def test_jax_commands_without_jax_name_the_jax_extra(command, tmp_path):
    completed = run_without(JAX_EXTRA, "import sys\nfrom seq2seq_jax.cli import main\nsys.exit(main())",
                            tmp_path, *command)
    # It names the first module of the extra that the command imports (JAX for jax, flax, optax, orbax).
    assert completed.returncode == 2
    [line] = completed.stderr.splitlines()
    # From this checkout (on PYTHONPATH, run from elsewhere): the editable install of it; scripts/check_installs.sh
    # checks the line of an installed wheel, "pip install 'seq2seq-jax[jax]'".
    assert re.fullmatch(rf"seq2seq {command[0]} needs (JAX|\w+): install the jax extra "
                        rf'\(pip install -e "{re.escape(str(REPO))}\[jax\]"\)', line), line
    assert not (tmp_path / "W").exists() and not (tmp_path / "W2").exists()


# Train a tiny model, translate, export, import the export (.safetensors) and translate again, all through the
# command line, with torch missing; then bfloat16 tensors through save_state_dict / read_state_dict_file.
JAX_SIDE = """
import contextlib, io, json, sys
import numpy as np, ml_dtypes
from seq2seq_jax import cli
from seq2seq_jax.training.export import read_state_dict_file, save_state_dict
from seq2seq_jax.training.tasks import generate_task

def run(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(list(argv)) == 0, argv
    return out.getvalue()

config = {"model": dict(src_embed_size=8, tgt_embed_size=8, enc_hidden_size=8, dec_hidden_size=16,
                        attention_size=8, readout_size=8),
          "data": dict(task_train_size=200, task_valid_size=20, batch_size=16, bucket_width=64),
          "train": dict(max_steps=8, eval_every=1000, save_every=8, log_every=8, warmup_steps=2)}
open("config.json", "w").write(json.dumps(config))
open("inputs.txt", "w").write("".join(src + "\\n" for src, _ in generate_task("dates", 20, seed=5)))
run("train", "--workdir", "run", "--config", "config.json")
outputs = {}
for workdir in ("run", "imported"):
    if workdir == "imported":
        run("export-torch", "--workdir", "run", "--out", "export")
        run("import-torch", "--src", "export", "--workdir", "imported")
    for beam in ("1", "3"):
        outputs[workdir, beam] = run("translate", "--workdir", workdir, "--input", "inputs.txt", "--beam-size", beam)
assert outputs["run", "1"].count("\\n") == 20 and outputs["run", "3"].count("\\n") == 20
assert outputs["run", "1"] == outputs["imported", "1"] and outputs["run", "3"] == outputs["imported", "3"]

arrays = {"tgt_embed.weight": np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16),
          "output.weight": np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16),
          "output.bias": np.linspace(-1, 1, 3, dtype=np.float32).astype(ml_dtypes.bfloat16)}
save_state_dict(arrays, "bf16.safetensors", tied=("output.weight",))
back = read_state_dict_file("bf16.safetensors")
assert sorted(back) == ["output.bias", "tgt_embed.weight"]
assert all(back[k].dtype == arrays[k].dtype and np.array_equal(back[k], arrays[k]) for k in back)
assert "torch" not in sys.modules
print("ok")
"""


def test_jax_side_trains_translates_exports_and_imports_without_torch(tmp_path):
    completed = run_without(("torch",), JAX_SIDE, tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("ok")
    # The bfloat16 file written without torch is the one safetensors.torch writes.
    tensors = {key: torch.tensor(values, dtype=torch.float32).to(torch.bfloat16) for key, values in (
        ("tgt_embed.weight", np.arange(12, dtype=np.float32).reshape(3, 4)),
        ("output.bias", np.linspace(-1, 1, 3, dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)))}
    save_torch(tensors, str(tmp_path / "torch.safetensors"), metadata={"format": "torch_ref"})
    assert (tmp_path / "bf16.safetensors").read_bytes() == (tmp_path / "torch.safetensors").read_bytes()


def test_import_torch_of_a_pt_file_without_torch_names_the_torch_extra(tmp_path):
    from seq2seq_jax.core.tokenizer import VocabularyTokenizer

    lines = ["March 3, 2021", "14 July 1789"]
    source = tmp_path / "source"
    (source / "tokenizer").mkdir(parents=True)
    tokenizer = VocabularyTokenizer.train("char", lines, 1, 100)
    tokenizer.save(source / "tokenizer", "src")
    tokenizer.save(source / "tokenizer", "tgt")
    vocab = tokenizer.vocab_size
    config = tiny_config(f"model.src_vocab_size={vocab}", f"model.tgt_vocab_size={vocab}")
    (source / "config.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    torch.save({"src_embed.weight": torch.zeros(vocab, 8)}, source / "model.pt")
    code = "import sys\nfrom seq2seq_jax.cli import main\nsys.exit(main())"
    completed = run_without(("torch",), code, tmp_path, "import-torch", "--src", str(source / "model.pt"),
                            "--workdir", str(tmp_path / "imported"))
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        f"seq2seq import-torch: error: {source / 'model.pt'}: reading a torch.save file needs PyTorch: install the "
        f'torch extra (pip install -e "{REPO}[torch]"), or import a .safetensors file']
    assert not (tmp_path / "imported").exists()
