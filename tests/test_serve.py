"""``seq2seq serve`` as users run it: a subprocess on a free loopback port, serving a tiny trained workdir, talked
to over HTTP. Its answers equal ``seq2seq translate``'s, with target prefixes and for an ensemble of two workdirs
too (a request sent during warm-up is answered after it); 64 concurrent clients get their serial answers; bad
requests get a 4xx and the server keeps serving; the web page draws the attention heatmap in headless Chromium;
SIGTERM finishes the requests in flight and exits 0 (the module's last test: it ends the shared server). Also
``seq2seq translate --interactive`` through a pipe."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from run_support import tiny_config

from seq2seq_jax import cli
from seq2seq_jax.training.tasks import generate_task
from seq2seq_jax.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"max_texts": 8, "max_chars": 40, "max_body_bytes": 4096}
SOURCES = ["March 3, 2021", "14 July 1789", "", "1999-12-31", "Tuesday, May 1, 2001", "3/4/05"]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "run"
    train(tiny_config("train.max_steps=8", "train.eval_every=8"), path)
    return path


@pytest.fixture(scope="module")
def second_workdir(tmp_path_factory):
    """Another tiny model (another seed, the same tokenizers): the ensemble's second member."""
    path = tmp_path_factory.mktemp("serve") / "run2"
    train(tiny_config("train.max_steps=8", "train.eval_every=8", "train.seed=1"), path)
    return path


@contextlib.contextmanager
def running_server(workdir, log_dir: Path, *options: str, during_warm_up: dict | None = None,
                   seen: list | None = None, launcher: tuple[str, ...] = ("-m", "seq2seq_jax"),
                   probes: list | None = None):
    """``seq2seq serve`` on a free port; yields (base URL, process, log path) once /health says ready (``launcher``:
    Python's arguments before the command's, ``-c SCRIPT`` to run it under a script). With
    ``during_warm_up``, that ``/v1/translate`` body is posted as soon as /health says "warming up" or lists shapes
    still warming, and the log path is followed by ``(the /health body it was sent at, its response)``, once
    answered. ``seen`` gets every /health body up to the first ready one, ``probes`` the status codes of /health
    and /health/live asked one after the other till then."""
    port = free_port()
    log = log_dir / "server.log"
    command = [sys.executable, *launcher, "serve", "--workdir", str(workdir), "--port", str(port),
               "--warmup-src-len", "32", *options] + [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment())
    early: list = []  # (the health status when the request was sent, its response)
    sender = threading.Thread(target=lambda: early.append(post(f"{url}/v1/translate", during_warm_up)))
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, f"the server exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the server did not get ready:\n{log.read_text()}"
            try:
                health = httpx.get(f"{url}/health", timeout=5)
                if seen is not None:
                    seen.append(health.json())
                if probes is not None:
                    probes.append((health.status_code, httpx.get(f"{url}/health/live", timeout=5).status_code))
                if during_warm_up is not None and not early and (health.status_code == 503
                                                                 or health.json()["warming"]):
                    early.append(health.json())
                    sender.start()
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        if during_warm_up is None:
            yield url, process, log
        else:
            assert early, "the server was ready before /health first answered: no request during warm-up"
            sender.join(timeout=240)
            yield url, process, log, tuple(early)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(workdir, tmp_path_factory):
    """The default server: searches of 1, 2, 4, ... or 64 rows."""
    with running_server(workdir, tmp_path_factory.mktemp("serve-log")) as running:
        yield running


@pytest.fixture(scope="module")
def ensemble_server(workdir, second_workdir, tmp_path_factory):
    """``--workdir A --workdir B``: an ensemble, sent ``SOURCES`` during its warm-up."""
    with running_server(workdir, tmp_path_factory.mktemp("serve-log"), "--workdir", str(second_workdir),
                        during_warm_up={"texts": SOURCES}) as running:
        yield running


@pytest.fixture(scope="module")
def exact_server(workdir, tmp_path_factory):
    """``--fixed-rows``: every search has 64 rows."""
    with running_server(workdir, tmp_path_factory.mktemp("serve-log"), "--fixed-rows") as running:
        yield running


def cli_translate(workdir, capsys, lines, *options) -> list[str]:
    """``seq2seq translate`` on ``lines``: its output lines, one per input (``--one-line-per-input``)."""
    stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(("\n".join(lines) + "\n").encode("utf-8")), encoding="utf-8")
    try:
        assert cli.main(["translate", "--workdir", str(workdir), "--one-line-per-input", *options]) == 0
    finally:
        sys.stdin = stdin
    return capsys.readouterr().out.split("\n")[:-1]


def post(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(url, json=body, timeout=120, **kwargs)


def assert_same_as_translate(expected: list[str], translations: list, texts: list[str], n_best: int) -> None:
    """``/v1/translate``'s translations equal ``seq2seq translate``'s output lines (the text with ``n_best`` 1, else
    text and score, 6 decimals, per hypothesis); a blank text has no hypothesis (an empty line)."""
    assert len(translations) == len(texts) == len(expected)
    for text, line, hypotheses in zip(texts, expected, translations, strict=True):
        if not text.strip():
            assert hypotheses == [] and line == ""
            continue
        assert len(hypotheses) == n_best and hypotheses[0]["score"] >= hypotheses[-1]["score"]
        if n_best == 1:
            assert line == hypotheses[0]["text"]
        else:
            assert line == "\t".join(f"{h['text']}\t{h['score']:.6f}" for h in hypotheses)


PREFIXES = ["2021-", "", "19", "1999-1", "", "2005-04"]  # the third text is blank: no translation, whatever prefix


def test_prefixes_answers_equal_translate_with_prefix(server, workdir, capsys, tmp_path):
    url = server[0]
    (tmp_path / "prefixes").write_text("\n".join(PREFIXES) + "\n", encoding="utf-8")
    expected = cli_translate(workdir, capsys, SOURCES, "--beam-size", "3", "--n-best", "2",
                             "--prefix", str(tmp_path / "prefixes"))
    answer = post(f"{url}/v1/translate", {"texts": SOURCES, "prefixes": PREFIXES, "beam_size": 3, "n_best": 2})
    assert answer.status_code == 200, answer.text
    translations = answer.json()["translations"]
    assert_same_as_translate(expected, translations, SOURCES, 2)
    for prefix, hypotheses in zip(PREFIXES, translations, strict=True):
        assert all(h["text"].startswith(prefix) for h in hypotheses)
    # Requests with and without prefixes, sent at once, merge and get their answers alone.
    bodies = [{"texts": [text], "prefixes": [prefix]} for text, prefix in zip(SOURCES, PREFIXES, strict=True)]
    bodies += [{"texts": [text]} for text in SOURCES]
    serial = [post(f"{url}/v1/translate", body).json()["translations"] for body in bodies]
    answers: list = [None] * len(bodies)
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, post(f"{url}/v1/translate", bodies[i])))
               for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    for alone, merged in zip(serial, answers, strict=True):
        assert merged.status_code == 200, merged.text
        assert [[h["text"] for h in hyps] for hyps in merged.json()["translations"]] == [
            [h["text"] for h in hyps] for hyps in alone]
    health = httpx.get(f"{url}/health").json()
    assert {s["prefix_len"] for s in health["compiled"]} >= {0, 8}


def test_ensemble_answers_equal_translate_with_two_workdirs(ensemble_server, workdir, second_workdir, capsys,
                                                            tmp_path):
    url, _, _, (health, early) = ensemble_server
    both = ["--workdir", str(second_workdir)]
    assert health["status"] == "warming up" or health["warming"]  # sent during warm-up, then answered
    assert early.status_code == 200, early.text
    assert_same_as_translate(cli_translate(workdir, capsys, SOURCES, *both), early.json()["translations"],
                             SOURCES, 1)
    expected = cli_translate(workdir, capsys, SOURCES, *both, "--beam-size", "3", "--n-best", "2")
    answer = post(f"{url}/v1/translate", {"texts": SOURCES, "beam_size": 3, "n_best": 2})
    assert answer.status_code == 200, answer.text
    assert_same_as_translate(expected, answer.json()["translations"], SOURCES, 2)
    # Not the first model alone: the ensemble's scores differ from it.
    assert expected != cli_translate(workdir, capsys, SOURCES, "--beam-size", "3", "--n-best", "2")
    (tmp_path / "prefixes").write_text("\n".join(PREFIXES) + "\n", encoding="utf-8")
    expected = cli_translate(workdir, capsys, SOURCES, *both, "--prefix", str(tmp_path / "prefixes"))
    answer = post(f"{url}/v1/translate", {"texts": SOURCES, "prefixes": PREFIXES})
    assert_same_as_translate(expected, answer.json()["translations"], SOURCES, 1)
    info = httpx.get(f"{url}/v1/info").json()
    assert info["ensemble"] and [m["workdir"] for m in info["models"]] == [workdir.name, second_workdir.name]
    assert str(workdir.parent) not in json.dumps(info)  # names, not paths
    assert [m["step"] for m in info["models"]] == [8, 8] and all("valid_loss" in m["metrics"] for m in info["models"])
    attention = post(f"{url}/v1/translate", {"texts": ["May 1, 2000"], "attention": True}).json()
    assert attention["translations"][0][0]["attention"]["source"] == list("May 1, 2000") + ["</s>"]


def test_answers_equal_the_translate_command(server, workdir, capsys):
    url = server[0]
    expected = cli_translate(workdir, capsys, SOURCES, "--beam-size", "3", "--n-best", "2")
    answer = post(f"{url}/v1/translate", {"texts": SOURCES, "beam_size": 3, "n_best": 2})
    assert answer.status_code == 200, answer.text
    translations = answer.json()["translations"]
    assert_same_as_translate(expected, translations, SOURCES, 2)
    # OpenNMT-py's format, with the workdir's default settings (greedy, one hypothesis).
    expected = cli_translate(workdir, capsys, SOURCES)
    answer = post(f"{url}/translator/translate", [{"src": text, "id": 100 + i} for i, text in enumerate(SOURCES)])
    assert answer.status_code == 200, answer.text
    (ranks,) = answer.json()
    assert [item["tgt"] for item in ranks] == expected
    assert [item["src"] for item in ranks] == SOURCES
    assert all(item["n_best"] == 1 and isinstance(item["pred_score"], float) for item in ranks)
    assert ranks[2] == {"src": "", "tgt": "", "n_best": 1, "pred_score": 0.0, "id": 102}  # a blank one: not translated
    assert [item["id"] for item in ranks] == list(range(100, 100 + len(SOURCES)))  # echoed
    single = post(f"{url}/v1/translate", {"texts": [SOURCES[0]]}).json()["translations"][0][0]
    assert single["score"] == ranks[0]["pred_score"] and single["text"] == ranks[0]["tgt"]


def test_attention_weights_with_their_pieces(server):
    answer = post(f"{server[0]}/v1/translate", {"texts": ["May 1, 2000"], "beam_size": 2, "n_best": 2,
                                                "attention": True}).json()
    for hypothesis in answer["translations"][0]:
        attention = hypothesis["attention"]
        assert attention["source"] == list("May 1, 2000") + ["</s>"]
        weights = attention["weights"]
        assert len(weights) == len(attention["target"]) and len(attention["target"]) >= len(hypothesis["text"])
        assert "".join(attention["target"]).replace("</s>", "") == hypothesis["text"]
        for row in weights:
            assert len(row) == len(attention["source"]) and abs(sum(row) - 1) < 1e-3


def test_outputs_stop_at_the_maximum_decode_length(server):
    """A min_len beyond max_len = ceil(1.5 * source tokens + 10) is cut to it: 6 tokens ("May 1" + EOS) -> 19."""
    answer = post(f"{server[0]}/v1/translate", {"texts": ["May 1"], "min_len": 1000, "attention": True})
    assert answer.status_code == 200, answer.text
    (hypothesis,) = answer.json()["translations"][0]
    assert len(hypothesis["attention"]["target"]) == 19 and "</s>" not in hypothesis["attention"]["target"]


def concurrent_and_serial_answers(url: str, texts: list[str]) -> tuple[list, list, int]:
    """Each text's answer requested alone, one after the other, then by one client per text at once; and into how
    many decoding rounds the concurrent requests were merged."""
    with httpx.Client(timeout=120) as client:
        serial = [client.post(f"{url}/v1/translate", json={"texts": [text]}).json() for text in texts]
    before = httpx.get(f"{url}/health").json()
    answers: list = [None] * len(texts)
    barrier = threading.Barrier(len(texts))

    def client_thread(index: int) -> None:
        with httpx.Client(timeout=120) as client:
            barrier.wait(timeout=60)
            answers[index] = client.post(f"{url}/v1/translate", json={"texts": [texts[index]]}).json()

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    after = httpx.get(f"{url}/health").json()
    assert after["merged_requests"] - before["merged_requests"] == len(texts)
    return serial, answers, after["merged_batches"] - before["merged_batches"]


def test_64_concurrent_clients_get_their_serial_answers(server):
    texts = [source for source, _ in generate_task("dates", 64, seed=21)]
    serial, answers, batches = concurrent_and_serial_answers(server[0], texts)
    assert batches < len(texts)  # some requests were merged
    for alone, merged in zip(serial, answers, strict=True):
        (alone,), (merged,) = alone["translations"], merged["translations"]
        assert [h["text"] for h in merged] == [h["text"] for h in alone]
        # Other row counts and padded lengths: XLA:CPU rounds the matmuls differently (serve.py's docstring).
        assert [h["score"] for h in merged] == pytest.approx([h["score"] for h in alone], rel=1e-5)


def test_64_concurrent_clients_get_bit_identical_answers_with_fixed_rows(exact_server):
    texts = [source for source, _ in generate_task("dates", 64, seed=21)]
    serial, answers, batches = concurrent_and_serial_answers(exact_server[0], texts)
    assert batches < len(texts)
    assert answers == serial


def test_batching_policy_waits_for_the_clients_a_search_answered():
    """``seconds_to_wait`` on a fake clock: the time a free decoder still waits before taking the batch."""
    from seq2seq_jax.serving.policy import LastSearch, seconds_to_wait
    from seq2seq_jax.serving.schema import ServeLimits

    limits = ServeLimits(max_batch=64, max_wait_ms=10, refill_share=0.25)
    key, other = ("settings", False), ("settings", True)

    def wait(now, enqueued, waiting, last, request_key=key, policy=limits):
        return seconds_to_wait(now, enqueued, request_key, waiting, last, policy)

    # No search yet: max_wait_ms from the oldest request's arrival; none once max_batch texts wait.
    assert wait(100.004, 100.0, 1, None) == pytest.approx(0.006)
    assert wait(100.011, 100.0, 63, None) < 0
    assert wait(100.0, 100.0, 64, None) == 0
    # A search of 0.8 s answered 30 texts at t=100 while 34 queued behind it: wait for those 30 to come back, at
    # most a quarter of the search (0.2 s), then take what is there.
    last = LastSearch(key, ended=100.0, seconds=0.8, texts=30, queued=34)
    assert wait(100.0, 99.5, 34, last) == pytest.approx(0.2)
    assert wait(100.15, 99.5, 63, last) == pytest.approx(0.05)
    assert wait(100.15, 99.5, 64, last) == 0
    assert wait(100.2, 99.5, 40, last) == pytest.approx(0)
    # The earlier policy (refill_share 0): max_wait_ms from when the decoder is free.
    assert wait(100.0, 99.5, 34, last, policy=ServeLimits(refill_share=0)) == pytest.approx(0.01)
    # A lone closed-loop client: its next request is all that was expected, so it goes at once.
    lone = LastSearch(key, ended=100.0, seconds=0.07, texts=1, queued=0)
    assert wait(100.003, 100.003, 1, lone) == 0
    # Two clients answered, one back: wait for the other up to max_wait_ms (a quarter of 0.02 s is less).
    pair = LastSearch(key, ended=100.0, seconds=0.02, texts=2, queued=0)
    assert wait(100.003, 100.003, 1, pair) == pytest.approx(0.010)
    # Other settings, or a request long after the refill window: max_wait_ms, as if nothing were expected.
    assert wait(100.0, 99.5, 34, last, request_key=other) == pytest.approx(0.01)
    assert wait(200.0, 200.0, 1, lone) == pytest.approx(0.01)
    # Bounded: never past max(max_wait_ms, refill_share * search) after the later of the request and the free
    # decoder.
    rng = np.random.default_rng(0)
    for _ in range(1000):
        ended, seconds = rng.uniform(0, 10), rng.uniform(0, 5)
        enqueued, texts, queued = rng.uniform(0, 12), int(rng.integers(0, 65)), int(rng.integers(0, 65))
        search = LastSearch(key, ended, seconds, texts, queued)
        bound = max(enqueued, ended) + max(0.01, 0.25 * seconds)
        assert wait(0.0, enqueued, int(rng.integers(1, 64)), search) <= bound + 1e-12


BAD_REQUESTS = [  # (endpoint, raw body, status, a part of the error message)
    ("/v1/translate", b'{"texts": ["March 3, 2021"', 400, "malformed JSON"),
    ("/v1/translate", b'{"texts": "March 3, 2021"}', 422, "texts: Input should be a valid list"),
    ("/v1/translate", b'{"texts": [3]}', 422, "texts.0: Input should be a valid string"),
    ("/v1/translate", b'{"texts": []}', 422, "texts: List should have at least 1 item"),
    ("/v1/translate", json.dumps({"texts": ["a"] * 9}).encode(), 422, "9 texts, more than this server's limit of 8"),
    ("/v1/translate", json.dumps({"texts": ["b", "a" * 41]}).encode(), 422, "texts.1: 41 characters"),
    ("/v1/translate", b'{"texts": ["a"], "beam_size": 0}', 422, "beam_size: Input should be greater than or equal"),
    ("/v1/translate", b'{"texts": ["a"], "beam_size": -3}', 422, "beam_size: Input should be greater than or equal"),
    ("/v1/translate", b'{"texts": ["a"], "beam_size": "2"}', 422, "beam_size: Input should be a valid integer"),
    ("/v1/translate", b'{"texts": ["a"], "beam_size": 2, "n_best": 3}', 422, "n_best must be between 1 and beam"),
    ("/v1/translate", b'{"texts": ["a"], "beam_size": 99}', 422, "more than this server's limit of 16"),
    ("/v1/translate", b'{"texts": ["a"], "length_penalty": true}', 422, "length_penalty"),
    ("/v1/translate", b'{"texts": ["a"], "workdir": "/etc"}', 422, "workdir: Extra inputs are not permitted"),
    ("/v1/translate", b'{"texts": ["a", "b"], "prefixes": ["x"]}', 422, "prefixes: 1 prefixes for 2 texts"),
    ("/v1/translate", b'{"texts": ["a"], "prefixes": [3]}', 422, "prefixes.0: Input should be a valid string"),
    ("/v1/translate", b'{"texts": ["a"], "prefixes": ["' + b"1" * 41 + b'"]}', 422, "prefixes.0: 41 characters"),
    ("/v1/translate", json.dumps({"texts": ["", "May 1"], "prefixes": ["1" * 20] * 2}).encode(), 422,
     "prefixes:2: the prefix has 20 target pieces, more than the 19 tokens"),
    ("/v1/translate", json.dumps({"texts": ["a" * 40] * 120}).encode(), 413, "over the 4096-byte limit"),
    ("/translator/translate", b'[]', 422, "List should have at least 1 item"),
    ("/translator/translate", b'[{"src": "a", "id": "x"}]', 422, "0.id: Input should be a valid integer"),
    ("/translator/translate", b'[{"id": 100}]', 422, "0.src: Field required"),
    ("/translator/translate", b'{"src": "a"}', 422, "Input should be a valid list"),
]


@pytest.mark.parametrize("endpoint,body,status,message", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, endpoint, body, status, message):
    url = server[0]
    answer = httpx.post(f"{url}{endpoint}", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"], answer.json()
    assert (answer.json().get("status") == "error") == endpoint.startswith("/translator/")  # OpenNMT-py's shape
    assert post(f"{url}/v1/translate", {"texts": ["May 1, 2000"]}).status_code == 200


def test_body_cap_without_content_length_and_json_only(server):
    url = server[0]

    def chunks():
        for _ in range(100):
            yield b'{"texts": ["' + b"a" * 100

    streamed = httpx.post(f"{url}/v1/translate", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and "limit" in streamed.json()["error"]
    form = httpx.post(f"{url}/v1/translate", content=b'{"texts": ["a"]}',
                      headers={"Content-Type": "text/plain"})
    assert form.status_code == 415 and "Content-Type: application/json" in form.json()["error"]
    assert post(f"{url}/v1/translate", {"texts": ["May 1, 2000"]}).status_code == 200


def warmed_up(url: str) -> dict:
    """/health once the warm-up is done (the server is ready before: after its first shape)."""
    deadline = time.monotonic() + 240
    while (health := httpx.get(f"{url}/health").json())["warm_up"] != "done":
        assert health["warm_up"] == "background" and time.monotonic() < deadline, health
        time.sleep(0.2)
    return health


def test_health_info_docs_and_page(server):
    url = server[0]
    health = warmed_up(url)
    assert health["status"] == "ready" and health["step"] == 8 and health["row_buckets"] == [1, 4, 16, 64]
    assert health["warming"] == []
    assert health["gc_frozen_objects"] > 10_000  # what the warm-up left is out of the collector's way
    warmed = {(s["rows"], s["src_len"], s["attention"]) for s in health["compiled"] if s["default_settings"]}
    assert {(rows, width, False) for rows in (1, 4, 16, 64) for width in (16, 32)} <= warmed
    assert {(1, 16, True), (1, 32, True)} <= warmed
    info = httpx.get(f"{url}/v1/info").json()
    assert info["step"] == 8 and info["model"]["dec_hidden_size"] == 16 and info["decode"]["beam_size"] == 1
    assert "valid_loss" in info["metrics"] and info["limits"]["max_texts"] == 8
    assert {"/v1/translate", "/translator/translate", "/health", "/v1/info"} <= set(
        httpx.get(f"{url}/openapi.json").json()["paths"])
    assert httpx.get(f"{url}/translator/health").json() == {"status": "ok"}
    (onmt_model,) = httpx.get(f"{url}/translator/models").json()
    assert onmt_model["model_id"] == 100 and onmt_model["loaded"] and onmt_model["opt"]["steps"] == [8]
    for docs_path, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        docs = httpx.get(f"{url}{docs_path}")
        scripts = re.findall(r'<script src="([^"]+)"', docs.text)
        assert docs.status_code == 200 and len(scripts) == 1 and scripts[0].endswith(script), docs.text
        assert scripts[0].startswith("/") and "//" not in scripts[0]  # served here, not from a CDN
        assert httpx.get(f"{url}{scripts[0]}").status_code == 200
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "<svg" in page.text and "http" not in page.text.split("<script>")[1].replace(
        "http://www.w3.org/2000/svg", "")  # no CDN: every script is inline


def test_ready_after_the_first_shape_the_rest_warms_up_behind(workdir, capsys, tmp_path):
    """Ready once one short text's search (default settings, one row) is compiled; the other shapes compile in
    the background, in order of likelihood, and requests sent meanwhile get the answers they get afterwards."""
    seen: list = []
    with running_server(workdir, tmp_path, "--warmup-src-len", "64", seen=seen) as (url, _, _):
        ready = seen[-1]
        assert ready["status"] == "ready" and ready["warm_up"] in ("background", "done")
        assert all(health["status"] == "warming up" and health["compiled"] == [] for health in seen[:-1])
        first = ready["compiled"][0]
        assert (first["rows"], first["src_len"], first["attention"], first["default_settings"]) == (1, 16, False, True)
        plan = [(s["rows"], s["src_len"], s["attention"]) for s in ready["compiled"] + ready["warming"]]
        assert plan[:8] == [(1, width, attention) for attention in (False, True) for width in (16, 32, 48, 64)]
        assert sorted(plan[8:]) == [(rows, width, False) for rows in (4, 16, 64) for width in (16, 32, 48, 64)]
        before = httpx.get(f"{url}/health").json()
        during = post(f"{url}/v1/translate", {"texts": SOURCES})
        merged = post(f"{url}/v1/translate", {"texts": SOURCES[:2], "attention": True})
        assert before["warming"], "the warm-up was over before the test could ask during it"
        assert during.status_code == 200 and merged.status_code == 200, (during.text, merged.text)
        done = warmed_up(url)
        assert done["warming"] == [] and done["gc_frozen_objects"] > 10_000
        assert set(plan) <= {(s["rows"], s["src_len"], s["attention"]) for s in done["compiled"]}
        assert post(f"{url}/v1/translate", {"texts": SOURCES}).json() == during.json()
        assert post(f"{url}/v1/translate", {"texts": SOURCES[:2], "attention": True}).json() == merged.json()
    assert_same_as_translate(cli_translate(workdir, capsys, SOURCES), during.json()["translations"], SOURCES, 1)


def system_chromium() -> str:
    """Debian's chromium, which Playwright drives (its own browser download cannot run here); a missing browser
    fails the test in CI and skips it elsewhere."""
    executable = shutil.which("chromium")
    if executable is None:
        message = "Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it in CI)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return executable


def test_web_page_in_headless_chromium(server, tmp_path):
    """Types a date, submits, reads the translation and checks the heatmap: one cell per (target, source) piece;
    then again with a target prefix."""
    executable = system_chromium()
    from playwright.sync_api import sync_playwright

    url = server[0]
    expected = post(f"{url}/v1/translate", {"texts": ["July 4, 1776"], "beam_size": 2, "n_best": 2,
                                            "attention": True}).json()["translations"][0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url, timeout=60_000)
            page.fill("#source", "July 4, 1776")
            page.fill("#beam", "2")
            page.fill("#nbest", "2")
            page.click("#submit")
            page.wait_for_selector("li.hyp .text", timeout=60_000)
            assert page.locator("li.hyp .text").all_inner_texts() == [h["text"] for h in expected]
            assert [float(s) for s in page.locator("li.hyp .score").all_inner_texts()] == pytest.approx(
                [h["score"] for h in expected], abs=1e-4)
            attention = expected[0]["attention"]
            rows, cols = len(attention["target"]), len(attention["source"])
            assert page.locator("#heatmap rect.cell").count() == rows * cols
            assert page.get_attribute("#heatmap", "data-rows") == str(rows)
            assert page.get_attribute("#heatmap", "data-cols") == str(cols)
            labels = page.locator("#heatmap text").all_text_contents()
            assert labels == attention["source"] + attention["target"]
            prefixed = post(f"{url}/v1/translate", {"texts": ["July 4, 1776"], "prefixes": ["17"], "beam_size": 2,
                                                    "n_best": 2}).json()["translations"][0]
            page.fill("#prefix", "17")
            page.click("#submit")
            assert all(h["text"].startswith("17") for h in prefixed)
            page.wait_for_function("want => JSON.stringify([...document.querySelectorAll('li.hyp .text')]"
                                   ".map(node => node.textContent)) === want",
                                   arg=json.dumps([h["text"] for h in prefixed], separators=(",", ":"),
                                                  ensure_ascii=False),
                                   timeout=60_000)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert (tmp_path / "page.png").stat().st_size > 1000
        finally:
            browser.close()


def test_openapi_page_renders_offline_in_headless_chromium(server, tmp_path):
    """FastAPI's Swagger UI at /docs draws every endpoint with each request to another host refused, as on a
    machine without internet."""
    executable = system_chromium()
    from playwright.sync_api import sync_playwright

    url = server[0]
    elsewhere = []

    def only_this_server(route):
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.route("**/*", only_this_server)
            page.goto(f"{url}/docs", timeout=60_000)
            page.wait_for_selector(".opblock-summary-path", timeout=60_000)
            paths = {text.strip() for text in page.locator(".opblock-summary-path").all_inner_texts()}
            assert {"/v1/translate", "/translator/translate", "/health", "/v1/info"} <= paths, paths
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
        finally:
            browser.close()
    assert elsewhere == []


def test_translate_interactive_answers_each_line_before_the_next(workdir, capsys):
    expected = cli_translate(workdir, capsys, ["March 3, 2021", "14 July 1789"])
    process = subprocess.Popen([sys.executable, "-m", "seq2seq_jax", "translate", "--workdir", str(workdir),
                                "--interactive"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=environment())
    answers: list[str] = []

    def read_answer() -> str:
        reader = threading.Thread(target=lambda: answers.append(process.stdout.readline().decode("utf-8")))
        reader.start()
        reader.join(timeout=180)
        assert not reader.is_alive(), "no answer within 180 s"
        return answers[-1]

    try:
        process.stdin.write(b"March 3, 2021\n")
        process.stdin.flush()
        assert read_answer() == expected[0] + "\n"  # line 2 has not been written yet
        process.stdin.write(b"14 July 1789\n")
        process.stdin.close()
        assert read_answer() == expected[1] + "\n"
        assert process.wait(timeout=60) == 0, process.stderr.read().decode()
        assert process.stdout.read() == b""
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_finishes_requests_in_flight_and_exits_0(exact_server):
    """The module's last test: it stops the --fixed-rows server."""
    url, process, log = exact_server
    # beam 4 is not compiled yet, so these requests are still decoding (compiling) when SIGTERM arrives.
    bodies = [{"texts": [source for source, _ in generate_task("dates", 3, seed=30 + i)], "beam_size": 4}
              for i in range(6)]
    answers: list = [None] * len(bodies)

    def client_thread(index: int) -> None:
        answers[index] = post(f"{url}/v1/translate", bodies[index])

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while True:  # every request accepted (answered or in flight), at least one in flight
        in_flight = httpx.get(f"{url}/health").json()["in_flight_requests"]
        if in_flight + sum(answer is not None for answer in answers) == len(bodies):
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert in_flight >= 1
    process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=180)
    assert process.wait(timeout=60) == 0, log.read_text()
    for body, answer in zip(bodies, answers, strict=True):
        assert answer.status_code == 200, answer.text
        translations = answer.json()["translations"]
        assert len(translations) == len(body["texts"]) and all(len(h) == 1 for h in translations)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=5)
