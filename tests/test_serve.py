"""nmt-serve: a real server on a free port, real HTTP clients, a real browser for the page."""
import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nmt.serve import Limits, Server
from nmt.translate import Translator

from conftest import Running, get, post_all, reversal_pairs


@pytest.fixture(scope="module")
def translator(reversal_run):
    return Translator.load(reversal_run)


@pytest.fixture(scope="module")
def served(translator):
    running = Running(translator, Limits(max_sentences=50, max_chars=200, max_body_bytes=20_000,
                                         batch_wait_ms=50))
    yield running
    running.stop()


def test_concurrent_requests_are_batched_and_get_what_they_would_alone(served, translator):
    src, _ = reversal_pairs(60, seed=11)
    bodies = [{"sentences": src[i:i + 1 + i % 4], "beam_size": 1 + i % 3} for i in range(0, 48, 2)]
    bodies.append({"sentences": src[:3], "n_best": 2})
    bodies.append({"sentences": ["", "a b"], "attention": True})
    before = get(f"{served.url}/health")
    answers = post_all(served.url, bodies)
    after = get(f"{served.url}/health")
    for body, (status, answer) in zip(bodies, answers):
        assert status == 200, answer
        alone = translator.translate(body["sentences"], beam_size=body.get("beam_size"))
        assert answer["translations"] == alone
    nbest = answers[-2][1]["n_best"]
    assert nbest == [[{"translation": t, "score": s} for t, s in hyps]
                     for hyps in translator.translate_nbest(src[:3], n_best=2)]
    attention = answers[-1][1]["attention"]
    assert attention[0] is None and attention[1]["target"][-1] == "_"
    assert len(attention[1]["weights"]) == len(attention[1]["target"])
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == len(bodies) and batches < requests / 2  # many requests shared a batch


def test_requests_steer_their_sentences_and_get_what_they_would_alone(served, translator):
    src, _ = reversal_pairs(12, seed=12)
    bodies = [{"sentences": src[:4], "constraints": [["q"], None, ["r s", "t"], []],
               "beam_size": 3},
              {"sentences": src[4:8], "prefix": ["k", None, "", "j i"]},
              {"sentences": src[8:10], "prefix": ["k", "l"], "constraints": [["q"], ["r"]],
               "n_best": 2},
              {"sentences": ["<b>a b</b> {1} c", "a <i>b</i>"], "markup": "keep"},
              {"sentences": src[10:12]}]
    answers = post_all(served.url, bodies)
    for body, (status, answer) in zip(bodies, answers):
        assert status == 200, answer
        steering = {key: body[key] for key in ("constraints", "prefix") if key in body}
        options = {key: body[key] for key in ("beam_size", "markup") if key in body}
        assert answer["translations"] == translator.translate(body["sentences"], **steering,
                                                              **options)
    assert all(hyps[0]["translation"].startswith(p)
               for hyps, p in zip(answers[2][1]["n_best"], "kl"))
    [(status, answer)] = post_all(served.url, [{"sentences": ["a"], "constraints": [["a"]],
                                                "beam_size": 1}])
    assert status == 400 and "beam search only" in answer["error"]


BAD = [
    (b'{"sentences": ["a", "b"], "constraints": [["q"]]}', 400,
     "constraints: 1 entries for 2 sentences"),
    (b'{"sentences": ["a"], "constraints": ["q"]}', 400,
     "constraints[0]: expected a list of phrases"),
    (b'{"sentences": ["a"], "constraints": [[""]]}', 400,
     "constraints[0][0]: '' is an empty phrase"),
    (b'{"sentences": ["a"], "prefix": [3]}', 400, "prefix[0]: expected str, got int"),
    (b'{"sentences": ["a"], "prefix": {"a": 1}}', 400,
     "prefix: expected a list with one entry per sentence"),
    (b'{"sentences": ["a"], "constraints": [{"a": 1}]}', 400,
     "constraints[0]: expected a list of phrases"),
    (json.dumps({"sentences": ["a " * 90], "constraints": [["b " * 65]]}).encode(), 400,
     "constraints[0]: 65 target pieces, at most 64"),
    (b'{"sentences": ["a"], "markup": "drop"}', 400, "decode.markup"),
    (b"not json", 400, "request body: not valid JSON"),
    (b"[1, 2]", 400, 'expected a JSON object with "sentences"'),
    (b'{"text": "a"}', 400, 'expected a JSON object with "sentences"'),
    (b'{"sentences": "a b"}', 400, "sentences: expected a list of strings"),
    (b'{"sentences": ["a", 3]}', 400, "sentences[1]: expected str, got int"),
    (b'{"sentences": ["a"], "beams": 2}', 400, "unknown keys ['beams']"),
    (b'{"sentences": ["a"], "beam_size": 0}', 400, "decode.beam_size: 0 is out of range"),
    (b'{"sentences": ["a"], "beam_size": 151}', 400, "too large for a target vocabulary"),
    (b'{"sentences": ["a"], "length_penalty": NaN}', 400, "must be a finite number"),
    (b'{"sentences": ["a"], "attention": "yes"}', 400, "attention: expected true or false"),
    # nested deeper than Python recurses
    (b"[" * 5000 + b"]" * 5000, 400, "request body: not valid JSON"),
    (json.dumps({"sentences": ["a"] * 51}).encode(), 413, "51 in one request, at most 50"),
    (json.dumps({"sentences": ["a " * 101]}).encode(), 413,
     "sentences[0]: 202 characters, at most 200"),
    (json.dumps({"sentences": ["a"], "pad": "x" * 30_000}).encode(), 413,
     "larger than 20000 bytes"),
]


@pytest.mark.parametrize("body, status, message", BAD)
def test_bad_requests_get_a_4xx_naming_the_problem(served, body, status, message):
    [(got, answer)] = post_all(served.url, [body])
    assert (got, message in answer["error"]) == (status, True), answer
    assert "\n" not in answer["error"]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(JSON, st.fixed_dictionaries(
    {"sentences": st.lists(st.text(max_size=20), max_size=4)},
    optional={"beam_size": JSON, "n_best": JSON, "length_penalty": JSON, "max_length_ratio": JSON,
              "attention": JSON})))
def test_no_request_crashes_the_server(served, body):
    [(status, answer)] = post_all(served.url, [body])
    assert status in (200, 400, 413), answer
    if status == 200:
        assert len(answer["translations"]) == len(body["sentences"])


def test_health_and_info(served, translator):
    assert get(f"{served.url}/health")["status"] == "ok"
    info = get(f"{served.url}/info")
    assert (info["src_lang"], info["tgt_lang"]) == ("src", "tgt")
    assert info["step"] == translator.run.step and info["checkpoint"].endswith("best.pt")
    assert info["engine"] == "pytorch float32" and not info["int8"]
    assert info["decode"]["beam_size"] == translator.decode.beam_size
    assert info["limits"]["max_sentences"] == 50


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="Chromium is not installed (apt-get install chromium)")
def test_the_page_translates_and_draws_the_attention_in_chromium(served, translator, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    text = "a b c d"
    page = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
         f"{served.url}/?text={urllib.parse.quote(text)}"],
        check=True, capture_output=True, timeout=120).stdout.decode()
    expected = translator.translate(text)
    assert f'<div id="translation">{expected}</div>' in page
    assert page.count('<table class="heatmap">') == 1 and "rgba(30, 90, 200," in page
    assert "src → tgt" in page


async def _post(url: str, body: dict, timeout: float | None = None) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(f"{url}/translate", data=json.dumps(body).encode()) as response:
            return response.status, await response.json(), dict(response.headers)


@pytest.fixture(scope="module")
def guarded(translator):
    running = Running(translator, Limits(max_output_pieces=4, max_length_ratio_cap=3.0,
                                         max_attention_mb=1, max_queued_sentences=6,
                                         batch_wait_ms=50))
    yield running
    running.stop()


def test_what_one_request_may_cost_is_bounded_before_it_is_decoded(guarded, translator):
    long = " ".join("abcdefghij" * 2)
    for body, message in (({"max_length": 5},
                           "max_length: 5 is more than this server's --max-output-pieces (4)"),
                          ({"max_length_ratio": 3.5},
                           "max_length_ratio: 3.5 is more than this server's"),
                          ({"attention": True, "beam_size": 10, "sentences": ["ab " * 600] * 6},
                           "attention: keeping it for"),
                          ({"sentences": ["a"] * 7},
                           "7 in one request, more than this server queues (6)")):
        status, answer, _ = asyncio.run(_post(guarded.url, {"sentences": [long], **body}))
        assert status in (400, 413) and message in answer["error"], answer
    status, answer, _ = asyncio.run(_post(guarded.url, {"sentences": [long],
                                                        "max_length_ratio": 3.0}))
    assert status == 200  # no more output pieces than --max-output-pieces, also unasked
    assert answer["translations"] == [translator.translate(long, max_length=4)]
    assert len(translator.tgt_vocab.encode(answer["translations"])[0]) <= 4
    # n_best widens the beam, as everywhere else (the run's beam is 3)
    status, answer, _ = asyncio.run(_post(guarded.url, {"sentences": ["a b c"], "n_best": 5}))
    assert status == 200 and len(answer["n_best"][0]) == 5


def test_a_full_queue_answers_503_with_retry_after(guarded, translator):
    src, _ = reversal_pairs(40, seed=3)
    bodies = [{"sentences": src[i:i + 3]} for i in range(0, 36, 3)]

    async def all_at_once():
        return await asyncio.gather(*(_post(guarded.url, body) for body in bodies))

    answers = asyncio.run(all_at_once())
    busy = [a for a in answers if a[0] == 503]
    assert busy and all(a[2].get("Retry-After") == "1" and "busy" in a[1]["error"] for a in busy)
    for body, (status, answer, _) in zip(bodies, answers):
        if status == 200:
            assert answer["translations"] == translator.translate(body["sentences"], max_length=4)
    assert {s for s, _, _ in answers} == {200, 503}
    health = get(f"{guarded.url}/health")
    assert health["status"] == "ok" and health["queued_sentences"] == 0


def test_a_request_whose_client_hung_up_is_not_decoded(translator, monkeypatch):
    running = Running(translator, Limits(batch_wait_ms=1))
    real = translator.hypotheses

    def slow(*args, **kwargs):  # the model's thread stays busy for a while with each batch
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(translator, "hypotheses", slow)

    async def scenario():
        first = asyncio.create_task(_post(running.url, {"sentences": ["a b c"]}))
        await asyncio.sleep(0.2)  # the first request is being decoded
        with pytest.raises(asyncio.TimeoutError):
            await _post(running.url, {"sentences": ["c b a"]}, timeout=0.1)  # gives up, hangs up
        return await first

    try:
        status, answer, _ = asyncio.run(scenario())
        assert status == 200 and answer["translations"] == [translator.translate("a b c")]
        time.sleep(1.0)  # the batcher has taken the second request from the queue
        health = get(f"{running.url}/health")
        assert health["abandoned"] == 1 and health["requests"] == 1
    finally:
        running.stop()


def test_the_deadline_holds_while_a_batch_is_decoded(translator, monkeypatch):
    from nmt.errors import ConfigError
    with pytest.raises(ConfigError, match="beyond --max-length-ratio-cap 1.0"):
        Server(translator, Limits(max_length_ratio_cap=1.0))  # the run's own 2.0 would be refused
    running = Running(translator, Limits(batch_wait_ms=1, request_timeout_s=0.5))
    real = translator.hypotheses

    def slow(*args, **kwargs):
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(translator, "hypotheses", slow)
    try:
        start = time.monotonic()
        status, answer, _ = asyncio.run(_post(running.url, {"sentences": ["a b c"]}))
        assert status == 504 and "--request-timeout-s (0.5 s)" in answer["error"]
        assert time.monotonic() - start < 1.4  # answered at its deadline, not after the batch
        time.sleep(1.5)
        health = get(f"{running.url}/health")
        assert health["status"] == "ok" and health["queued_sentences"] == 0
    finally:
        running.stop()
