"""docs/tutorial.md runs as written: its shell blocks, in order, on a small generated corpus.

Three things differ from a user's run, each a marked substitution: the corpus files (the line marked
``# your files``), the training shortened to a few steps with a vocabulary the small corpus can fill, and the
server's port (a free one). TensorBoard (``# separate install``) is not installed here and is left out.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from seq2seq_jax.training.tasks import generate_task

REPO = Path(__file__).resolve().parents[1]
TUTORIAL = REPO / "docs" / "tutorial.md"
SHORT_TRAINING = ("--preset small --set train.max_steps=24 --set train.eval_every=12 --set train.save_every=4 "
                  "--set train.valid_sample_size=20 --set data.vocab_size=400 --set train.warmup_steps=4")


def tutorial_commands() -> list[str]:
    """The lines of the tutorial's ``bash`` blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_tutorial_runs_as_written(tmp_path):
    pairs = generate_task("numbers", 2600, seed=5)  # 1000 valid, 1000 test, 600 train, as the split cuts them
    (tmp_path / "corpus.en").write_text("".join(source + "\n" for source, _ in pairs), encoding="utf-8")
    (tmp_path / "corpus.fr").write_text("".join(target + "\n" for _, target in pairs), encoding="utf-8")
    port = str(free_port())
    script = ["set -euo pipefail", f"SRC={tmp_path / 'corpus.en'} TGT={tmp_path / 'corpus.fr'}"]
    substituted = {"corpus": 0, "training": 0, "port": 0}
    for line in tutorial_commands():
        if line.endswith("# your files"):
            substituted["corpus"] += 1
            continue
        if line.endswith("# separate install"):
            continue
        if line.startswith("seq2seq train ") and "--preset small" in line:
            line = line.replace("--preset small", SHORT_TRAINING)
            substituted["training"] += 1
        if "5000" in line:
            line = line.replace("5000", port)
            substituted["port"] += 1
        script.append(line)
    assert substituted["corpus"] == 1 and substituted["training"] == 1 and substituted["port"] >= 3, substituted
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "1000 valid.src" in out and "1000 test.src" in out and "600 train.src" in out
    assert out.count("BLEU ") == 2 and out.count("chrF++ ") == 2  # the best checkpoint, then the average
    assert len((tmp_path / "test.hyp").read_text(encoding="utf-8").splitlines()) == 3 * 1000  # --n-best 3
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "small.json").stat().st_size > 0
    assert (tmp_path / "exports" / "en-fr" / "config.json").exists()
    assert '"translations"' in out or '"text"' in out  # the server's JSON answer
