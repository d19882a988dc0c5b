"""``seq2seq serve`` as a deployer runs it, on loopback: a subprocess started under a script that injects faults
(a text ``!sleep=S`` holds its search S seconds, ``!explode`` fails its answer) so that the queue, timeouts and
errors can be driven from outside. A burst past ``--max-queue`` gets 429s and every accepted request its answer;
past ``--request-timeout`` 503; a 500 names a request id; the API key (the page asks for it) and CORS."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
from test_serve import running_server, system_chromium, warmed_up, workdir  # noqa: F401 (workdir: a fixture)

FAULTS = """
import re, sys, time
from seq2seq_jax.serving import app, decoder
translate = decoder.BatchingDecoder._translate
def slow(self, texts, *args):
    for text in texts:
        if match := re.match(r"!sleep=([0-9.]+)", text):
            time.sleep(float(match.group(1)))
    return translate(self, texts, *args)
decoder.BatchingDecoder._translate = slow
answer = app.hypothesis_json
def failing(model, source, hypothesis, *args):
    if source == "!explode":
        raise RuntimeError("the secret s3cr3t in /home/deployer/private")
    return answer(model, source, hypothesis, *args)
app.hypothesis_json = failing
from seq2seq_jax import cli
sys.exit(cli.main(sys.argv[1:]))
"""
MAX_QUEUE = 4
TIMEOUT = 3  # seconds
KEY = "k3y-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}
ALLOWED = "http://allowed.test"
SHUTDOWN_TIMEOUT = 2  # seconds


@pytest.fixture(scope="module")
def deploy_server(workdir, tmp_path_factory):  # noqa: F811
    """The fault-injected server with the deployment options; after the log path, the (/health, /health/live)
    status codes asked during its start."""
    probes: list = []
    logs = tmp_path_factory.mktemp("deploy-log")
    (logs / "key").write_text(KEY + "\n", encoding="utf-8")
    with running_server(workdir, logs, "--max-queue", str(MAX_QUEUE), "--request-timeout", str(TIMEOUT),
                        "--api-key-file", str(logs / "key"), "--cors-origin", ALLOWED, "--cors-origin", "http://b.test",
                        launcher=("-c", FAULTS), probes=probes) as running:
        yield (*running, probes)


@pytest.fixture(scope="module")
def quiet_server(workdir, tmp_path_factory):  # noqa: F811
    """The fault-injected server without an access log or a key (the module's last tests stop it)."""
    with running_server(workdir, tmp_path_factory.mktemp("quiet-log"), "--quiet", "--shutdown-timeout",
                        str(SHUTDOWN_TIMEOUT), launcher=("-c", FAULTS)) as running:
        yield running


def post(url: str, body, timeout: float = 120, headers: dict | None = None) -> httpx.Response:
    """A POST with the API key."""
    return httpx.post(url, json=body, timeout=timeout, headers={**AUTH, **(headers or {})})


def in_background(call) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(call()))
    thread.start()
    return thread, result


def wait_for(url: str, condition, seconds: float = 60) -> dict:
    """/health once ``condition(health)`` holds."""
    deadline = time.monotonic() + seconds
    while not condition(health := httpx.get(f"{url}/health", timeout=10).json()):
        assert time.monotonic() < deadline, health
        time.sleep(0.02)
    return health


def test_a_burst_past_the_queue_gets_429s_and_every_accepted_request_its_answer(deploy_server):
    url = deploy_server[0]
    warmed_up(url)
    texts = [f"{day} May 20{day:02d}" for day in range(1, 13)]
    before = httpx.get(f"{url}/health").json()
    blocker, blocked = in_background(lambda: post(f"{url}/v1/translate", {"texts": ["!sleep=1.5"]}))
    wait_for(url, lambda h: h["in_flight_requests"] == 1 and h["queued_texts"] == 0)  # it holds the decoder
    barrier = threading.Barrier(len(texts))
    answers: list = [None] * len(texts)

    def client(index: int) -> None:
        barrier.wait(timeout=60)
        answers[index] = post(f"{url}/v1/translate", {"texts": [texts[index]]})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads + [blocker]:
        thread.join(timeout=180)
    assert blocked[0].status_code == 200, blocked[0].text
    statuses = [answer.status_code for answer in answers]
    accepted = [i for i, status in enumerate(statuses) if status == 200]
    refused = [i for i, status in enumerate(statuses) if status == 429]
    assert len(accepted) + len(refused) == len(texts) and 1 <= len(accepted) <= MAX_QUEUE and refused, statuses
    for index in refused:
        assert int(answers[index].headers["Retry-After"]) >= 1
        assert "--max-queue" in answers[index].json()["error"]
    after = httpx.get(f"{url}/health").json()
    assert after["in_flight_requests"] == 0 and after["queued_texts"] == 0
    assert after["merged_requests"] - before["merged_requests"] == 1 + len(accepted)  # each answered once
    assert after["refused_requests"] - before["refused_requests"] == len(refused)
    for index in accepted:  # the answer it gets alone; the server still serves
        alone = post(f"{url}/v1/translate", {"texts": [texts[index]]})
        assert alone.status_code == 200 and alone.json() == answers[index].json()


def test_a_request_past_the_timeout_gets_503_and_the_next_is_answered(deploy_server):
    url = deploy_server[0]
    started = time.monotonic()
    late = post(f"{url}/v1/translate", {"texts": ["!sleep=4.5"]})
    assert late.status_code == 503 and "--request-timeout" in late.json()["error"], late.text
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 1.5
    assert "its search had begun" in late.json()["error"]
    after = post(f"{url}/v1/translate", {"texts": ["May 1, 2000"]})  # queued behind the rest of that search
    assert after.status_code == 200 and after.json()["translations"][0][0]["text"]


def test_a_client_gone_before_its_search_began_is_not_decoded(deploy_server):
    url = deploy_server[0]
    wait_for(url, lambda h: h["in_flight_requests"] == 0)
    before = httpx.get(f"{url}/health").json()
    blocker, blocked = in_background(lambda: post(f"{url}/v1/translate", {"texts": ["!sleep=2"]}))
    wait_for(url, lambda h: h["in_flight_requests"] == 1 and h["queued_texts"] == 0)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        post(f"{url}/v1/translate", {"texts": ["June 2, 2002"]}, timeout=0.5)
    gone = wait_for(url, lambda h: h["cancelled_requests"] > before["cancelled_requests"], seconds=10)
    assert gone["in_flight_requests"] == 1  # withdrawn at once, while the blocker still decodes
    blocker.join(timeout=60)
    assert blocked[0].status_code == 200
    after = wait_for(url, lambda h: h["in_flight_requests"] == 0)
    assert after["merged_requests"] - before["merged_requests"] == 1  # the blocker alone was decoded
    assert after["cancelled_requests"] - before["cancelled_requests"] == 1


def test_an_internal_error_gets_a_request_id_and_its_traceback_goes_to_the_log(deploy_server):
    url, _, log, _ = deploy_server
    failed = post(f"{url}/v1/translate", {"texts": ["May 1, 2000", "!explode"]})
    assert failed.status_code == 500, failed.text
    request_id = failed.json()["request_id"]
    assert failed.headers["X-Request-ID"] == request_id and request_id in failed.json()["error"]
    for secret in ("s3cr3t", "/home", "RuntimeError", "Traceback", "app.py"):
        assert secret not in failed.text
    logged = log.read_text()
    assert f"request {request_id} (POST /v1/translate) failed" in logged
    assert "Traceback" in logged and "s3cr3t" in logged.split(request_id, 1)[1]
    answer = post(f"{url}/v1/translate", {"texts": ["May 1, 2000"]}, headers={"X-Request-ID": "trace-42"})
    assert answer.status_code == 200 and answer.headers["X-Request-ID"] == "trace-42"
    refused = post(f"{url}/v1/translate", {"texts": []}, headers={"X-Request-ID": "bad id/../x"})
    assert refused.status_code == 422 and len(refused.headers["X-Request-ID"]) == 16  # a new one


def test_info_names_the_workdir_and_checkpoint_never_a_path(deploy_server, workdir):  # noqa: F811
    info = httpx.get(f"{deploy_server[0]}/v1/info", headers=AUTH)
    assert info.status_code == 200
    body = info.json()
    assert (body["workdir"], body["checkpoint"], body["step"]) == (workdir.name, "best", 8)
    assert [(m["workdir"], m["checkpoint"], m["step"]) for m in body["models"]] == [(workdir.name, "best", 8)]
    assert str(workdir.parent) not in info.text and "/tmp" not in info.text


def test_liveness_while_warming_up_readiness_once_ready(deploy_server):
    url, probes = deploy_server[0], deploy_server[3]
    assert probes and probes[-1] == (200, 200)
    assert all(live == 200 and ready in (200, 503) for ready, live in probes), probes  # live while not ready
    assert httpx.get(f"{url}/health/live").json() == {"status": "live"}
    assert httpx.get(f"{url}/health").json()["status"] == "ready"


@pytest.mark.parametrize("method,path", [("POST", "/v1/translate"), ("POST", "/translator/translate"),
                                         ("GET", "/v1/info"), ("GET", "/translator/models"),
                                         ("GET", "/openapi.json")])
def test_every_route_but_health_and_the_pages_needs_the_key(deploy_server, method, path):
    url, _, log, _ = deploy_server
    body = [{"src": "May 1"}] if path.startswith("/translator/") else {"texts": ["May 1"]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        refused = httpx.request(method, f"{url}{path}", json=body if method == "POST" else None, headers=headers)
        assert refused.status_code == 401 and "API key" in refused.json()["error"], refused.text
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    answered = httpx.request(method, f"{url}{path}", json=body if method == "POST" else None, headers=AUTH,
                             timeout=60)
    assert answered.status_code == 200, answered.text
    for open_path in ("/health", "/health/live", "/translator/health", "/", "/docs", "/redoc"):
        assert httpx.get(f"{url}{open_path}").status_code == 200, open_path
    assert KEY not in log.read_text()  # never logged


def test_cors_preflight_for_the_configured_origins_only(deploy_server):
    url = deploy_server[0]
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(f"{url}/v1/translate", headers={"Origin": ALLOWED, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = httpx.options(f"{url}/v1/translate", headers={"Origin": "http://evil.test", **preflight})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    answer = post(f"{url}/v1/translate", {"texts": ["May 1"]}, headers={"Origin": ALLOWED})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ALLOWED
    other = post(f"{url}/v1/translate", {"texts": ["May 1"]}, headers={"Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in other.headers  # the browser hides the answer


def test_api_key_sources(tmp_path):
    from seq2seq_jax.serving.access import resolve_api_key

    (tmp_path / "key").write_text("  from-file \nsecond line\n", encoding="utf-8")
    assert resolve_api_key("flag", None, {"SEQ2SEQ_JAX_API_KEY": "env"}) == "flag"
    assert resolve_api_key(None, str(tmp_path / "key"), {"SEQ2SEQ_JAX_API_KEY": "env"}) == "from-file"
    assert resolve_api_key(None, None, {"SEQ2SEQ_JAX_API_KEY": "env"}) == "env"
    assert resolve_api_key(None, None, {}) is None
    for key, key_file in (("a", str(tmp_path / "key")), ("  ", None)):
        with pytest.raises(ValueError):
            resolve_api_key(key, key_file, {})


def test_web_page_asks_for_the_key_and_sends_it(deploy_server):
    executable = system_chromium()
    from playwright.sync_api import sync_playwright

    url = deploy_server[0]
    expected = post(f"{url}/v1/translate", {"texts": ["July 4, 1776"], "beam_size": 2, "n_best": 2})
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url, timeout=60_000)
            page.wait_for_selector("#apikey", state="visible", timeout=60_000)  # asked for, after /v1/info's 401
            page.fill("#apikey", KEY)
            page.fill("#source", "July 4, 1776")
            page.fill("#beam", "2")
            page.fill("#nbest", "2")
            page.click("#submit")
            page.wait_for_selector("li.hyp .text", timeout=60_000)
            texts = [h["text"] for h in expected.json()["translations"][0]]
            assert page.locator("li.hyp .text").all_inner_texts() == texts
            page.wait_for_function("document.getElementById('info').dataset.loaded === 'yes'", timeout=60_000)
        finally:
            browser.close()


def scrape(url: str) -> dict[tuple, float]:
    """/metrics as {(sample name, labels...): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    answer = httpx.get(f"{url}/metrics", headers=AUTH)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(sample.name, *sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def test_metrics_count_what_was_sent_and_each_request_is_logged(deploy_server):
    url, _, log, _ = deploy_server
    wait_for(url, lambda h: h["in_flight_requests"] == 0)
    before = scrape(url)
    for index in range(3):
        assert post(f"{url}/v1/translate", {"texts": ["May 1", "June 2"]},
                    headers={"X-Request-ID": f"metrics-{index}"}).status_code == 200
    assert post(f"{url}/translator/translate", [{"src": "May 1"}] * 3).status_code == 200
    assert post(f"{url}/v1/translate", {"texts": []}).status_code == 422
    assert httpx.post(f"{url}/v1/translate", json={"texts": ["a"]}).status_code == 401
    assert httpx.get(f"{url}/no/such/path", headers=AUTH).status_code == 404
    after = scrape(url)

    def grew(name, **labels):
        key = (name, *sorted(labels.items()))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("seq2seq_requests_total", route="/v1/translate", status="200") == 3
    assert grew("seq2seq_requests_total", route="/translator/translate", status="200") == 1
    assert grew("seq2seq_requests_total", route="/v1/translate", status="422") == 1
    assert grew("seq2seq_requests_total", route="/v1/translate", status="401") == 1
    assert grew("seq2seq_requests_total", route="unmatched", status="404") == 1
    assert grew("seq2seq_texts_total", route="/v1/translate") == 6
    assert grew("seq2seq_texts_total", route="/translator/translate") == 3
    assert grew("seq2seq_search_rows_count") == grew("seq2seq_search_seconds_count") == 4  # one search each
    assert grew("seq2seq_search_rows_sum") == 4 + 4 + 4 + 4  # 2 or 3 texts: 4 rows
    assert after[("seq2seq_queue_texts",)] == 0 and after[("seq2seq_compilations_total",)] >= 1
    assert 0 < after[("seq2seq_time_to_ready_seconds",)] < 240
    logged = log.read_text()
    for index in range(3):
        assert re.search(rf"POST /v1/translate 200 texts=2 [0-9.]+s id=metrics-{index}\n", logged), logged[-2000:]
    assert re.search(r"GET unmatched 404 texts=0 [0-9.]+s id=", logged)


def test_quiet_logs_no_access_lines(quiet_server):
    url, _, log = quiet_server
    assert post(f"{url}/v1/translate", {"texts": ["May 1"]}, headers={"X-Request-ID": "quiet-1"}).status_code == 200
    assert scrape(url)[("seq2seq_requests_total", ("route", "/v1/translate"), ("status", "200"))] == 1
    assert "quiet-1" not in log.read_text() and "POST /v1/translate" not in log.read_text()


def test_score_equals_the_score_command(deploy_server, workdir, tmp_path, capsys):  # noqa: F811
    from seq2seq_jax import cli

    url = deploy_server[0]
    sources = ["March 3, 2021", "14 July 1789", "", "1999-12-31"]
    targets = ["2021-03-03", "1789-07-14", "2000-01-01", ""]
    (tmp_path / "src").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (tmp_path / "tgt").write_text("\n".join(targets) + "\n", encoding="utf-8")
    assert cli.main(["score", "--workdir", str(workdir), "--src", str(tmp_path / "src"), "--tgt",
                     str(tmp_path / "tgt"), "--json"]) == 0
    captured = capsys.readouterr()
    expected = [json.loads(line) for line in captured.out.splitlines()]
    answer = post(f"{url}/v1/score", {"pairs": [{"src": s, "tgt": t} for s, t in zip(sources, targets, strict=True)]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["scores"] == expected and len(expected) == 4
    assert answer.json()["summary"] == json.loads(captured.err.strip().splitlines()[-1])
    for body, message in (({"pairs": []}, "pairs: List should have at least 1 item"),
                          ({"pairs": [{"src": "a"}]}, "pairs.0.tgt: Field required"),
                          ({"pairs": [{"src": "a", "tgt": "b" * 41}]}, "pairs.0.tgt: 41 characters"),
                          ({"pairs": [{"src": "a", "tgt": "b"}] * 9}, "9 pairs, more than")):
        refused = post(f"{url}/v1/score", body)
        assert refused.status_code == 422 and message in refused.json()["error"], refused.text


def test_sigterm_finishes_what_it_can_and_times_out_the_rest(quiet_server):
    """The module's last test: it stops the quiet server. A request whose search ends in time is answered; one
    stuck in a 30 s search gets 503 at --shutdown-timeout, and the process exits 0 soon after."""
    import signal

    url, process, log = quiet_server
    wait_for(url, lambda h: h["in_flight_requests"] == 0)
    quick, quick_answer = in_background(lambda: post(f"{url}/v1/translate", {"texts": ["!sleep=1"]}))
    wait_for(url, lambda h: h["in_flight_requests"] == 1 and h["queued_texts"] == 0)
    stuck, stuck_answer = in_background(lambda: post(f"{url}/v1/translate", {"texts": ["!sleep=30"]}))
    wait_for(url, lambda h: h["in_flight_requests"] == 2)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    quick.join(timeout=60)
    stuck.join(timeout=60)
    assert process.wait(timeout=30) == 0, log.read_text()
    assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT + 10
    assert quick_answer[0].status_code == 200, quick_answer[0].text
    assert stuck_answer[0].status_code == 503 and "--shutdown-timeout" in stuck_answer[0].json()["error"]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=5)
