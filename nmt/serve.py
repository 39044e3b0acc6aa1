"""``nmt-serve``: translations over HTTP (aiohttp), with requests batched together.

- ``POST /translate`` ``{"sentences": [...], "beam_size": 5, "n_best": 1, "attention": false}``
  (every key but ``sentences`` optional: ``attention`` and the decode options in ``OPTIONS``,
  the DecodeConfig fields marked ``served`` in ``nmt.config``; null or absent: the run's setting) ->
  ``{"translations": [...]}``, plus ``"n_best": [[{"translation", "score"}, ...], ...]`` when
  ``n_best`` > 1 and ``"attention": [{"source", "target", "weights"}, ...]`` when asked.
  Per sentence (``STEERING``): ``"prefix": [str | null, ...]`` and ``"constraints": [[phrase,
  ...] | null, ...]`` (``nmt.steer``); ``"markup": "keep"`` keeps tags and placeholders.
- ``GET /health`` -> ``{"status": "ok", "requests": ..., "batches": ...}``.
- ``GET /info`` -> languages, checkpoint, step, decoding settings, limits.
- ``GET /`` -> a page to type text and see its translation and attention.

Dynamic batching: one task takes the first waiting request, gathers those that
arrive within ``batch_wait_ms`` (up to ``max_batch_sentences`` sentences),
and decodes each group with the same settings as one batch in the model's
thread; meanwhile new requests queue for the next batch. A sentence's
translation and score do not depend on its batch, bit for bit (``nmt.invariant``),
so every request gets exactly what it would get alone. Bad requests get a 4xx with a one-line
JSON error; nothing a client sends stops the server.

What one request may cost is bounded before it is decoded: its output length
(``max_length`` up to ``--max-output-pieces``, which is also the default, and
``max_length_ratio`` up to ``--max-length-ratio-cap``) and, with ``"attention": true``,
the weights kept (``--max-attention-mb``). At most ``--max-queued-sentences`` wait to
be decoded (503 with Retry-After beyond), and a request whose client hung up while
it waited is dropped, not decoded.
"""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

try:
    from aiohttp import web
except ImportError:  # an optional extra: pip install 'nmt[serve]'
    web = None

from nmt import markup
from nmt.config import check_range, decode_fields
from nmt.data import with_end_marker
from nmt.directions import directions, label
from nmt.errors import ConfigError, NmtError
from nmt.search import max_output_lengths
from nmt.translate import Translator, checked_sentences

OPTIONS = tuple(option.name for option in decode_fields("served"))  # batch_size is the server's
STEERING = ("constraints", "prefix")  # per sentence: Translator.hypotheses' keywords
PAGE = Path(__file__).with_name("serve_page.html")


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20  # a request's JSON (413 beyond)
    max_sentences: int = 1000  # sentences in one request (413 beyond)
    max_chars: int = 2000  # characters in one sentence (413 beyond)
    max_batch_sentences: int = 256  # sentences decoded together, from all requests
    batch_wait_ms: float = 5.0  # how long a batch waits for more requests
    max_output_pieces: int = 512  # the longest output (a request's max_length: at most this; 400 beyond)
    max_length_ratio_cap: float = 4.0  # the largest max_length_ratio a request may ask for (400 beyond)
    max_attention_mb: int = 256  # what "attention": true may keep for one request (413 beyond)
    max_queued_sentences: int = 10_000  # waiting to be decoded (503 with Retry-After beyond)
    max_constraint_pieces: int = 64  # target pieces of one sentence's constraints (400 beyond)
    request_timeout_s: float = 60.0  # a request not translated by then gets a 504

    def __post_init__(self):
        for name, value in vars(self).items():
            check_range(f"--{name.replace('_', '-')}", value, (1, 1 << 30) if isinstance(value, int)
                        else (0.0, 60_000.0))


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(eq=False)  # a job is itself: compared by identity
class Job:
    sentences: list[str]
    options: dict
    attention: bool
    steering: dict  # "constraints", "prefix": one entry per sentence (absent: none)
    done: asyncio.Future = field(repr=False)
    gone: Callable[[], bool] = lambda: False  # whether the client has hung up
    deadline: float = float("inf")  # the event loop's time by which it must be answered
    next: int = 0  # sentences handed to the model so far
    parts: list[dict] = field(default_factory=list)  # the results of its slices decoded so far

    @property
    def left(self) -> int:
        return len(self.sentences) - self.next

    @property
    def key(self) -> tuple:
        return tuple(sorted(self.options.items())), self.attention


class Server:
    def __init__(self, translator: Translator, limits: Limits = Limits()):
        self.translator = translator
        self.limits = limits
        decode = translator.decode  # what a request that sets nothing gets must be allowed
        if decode.max_length_ratio > limits.max_length_ratio_cap or decode.max_length > limits.max_output_pieces:
            raise ConfigError(f"the run decodes with max_length_ratio {decode.max_length_ratio} and max_length "
                              f"{decode.max_length}, beyond --max-length-ratio-cap "
                              f"{limits.max_length_ratio_cap} or --max-output-pieces {limits.max_output_pieces}")
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="nmt-model")  # one model user
        self.queue: asyncio.Queue[Job] | None = None
        self.requests = self.batches = self.queued = self.abandoned = 0  # queued: sentences waiting

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        app.router.add_get("/", self.page)
        app.router.add_get("/health", self.health)
        app.router.add_get("/info", self.info)
        app.router.add_post("/translate", self.translate)
        app.cleanup_ctx.append(self._batching)
        return app

    async def _batching(self, app: web.Application):
        self.queue = asyncio.Queue()
        task = asyncio.create_task(self._batcher())
        yield
        task.cancel()
        self.model_thread.shutdown(wait=False, cancel_futures=True)

    # -- handlers ---------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "requests": self.requests, "batches": self.batches,
                                  "queued_sentences": self.queued, "abandoned": self.abandoned})

    async def info(self, request: web.Request) -> web.Response:
        run = self.translator.run
        return web.json_response({
            "src_lang": run.cfg.data.src_lang, "tgt_lang": run.cfg.data.tgt_lang,
            "directions": [label(d) for d in directions(run.cfg.data)],
            "checkpoint": str(run.checkpoint), "step": run.step, "int8": self.translator.int8,
            "engine": str(self.translator.engine),
            "decode": {k: v for k, v in asdict(self.translator.decode).items() if k != "batch_size"},
            "limits": asdict(self.limits)})

    async def translate(self, request: web.Request) -> web.Response:
        try:
            job = self._job(await self._json(request))
        except BadRequest as err:
            return web.json_response({"error": str(err)}, status=err.status)
        if self.queued + len(job.sentences) > self.limits.max_queued_sentences:
            return web.json_response({"error": f"busy: {self.queued} sentences wait to be decoded "
                                      f"(at most {self.limits.max_queued_sentences}); try again"},
                                     status=503, headers={"Retry-After": "1"})
        job.gone = lambda: request.transport is None or request.transport.is_closing()
        job.deadline = asyncio.get_running_loop().time() + self.limits.request_timeout_s
        self.queued += len(job.sentences)
        await self.queue.put(job)
        try:  # the deadline holds even while a batch is being decoded
            return web.json_response(await asyncio.wait_for(asyncio.shield(job.done),
                                                            self.limits.request_timeout_s))
        except (TimeoutError, asyncio.TimeoutError):  # one type from Python 3.11 on
            job.done.add_done_callback(lambda done: done.cancelled() or done.exception())  # nobody waits
            return web.json_response({"error": f"not translated within --request-timeout-s "
                                      f"({self.limits.request_timeout_s:g} s); try again"}, status=504)
        except Exception as err:  # a failure inside the model: this request fails, the server goes on
            return web.json_response({"error": f"translation failed ({type(err).__name__}: {err})"},
                                     status=500)

    async def _json(self, request: web.Request):
        try:
            return json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(413, f"request body: larger than {self.limits.max_body_bytes} bytes") from None
        except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
            raise BadRequest(400, f"request body: not valid JSON ({err})") from None

    def _job(self, body) -> Job:
        """The request's sentences and options, checked; BadRequest says what is wrong."""
        limits = self.limits
        if not isinstance(body, dict) or "sentences" not in body:
            raise BadRequest(400, 'request body: expected a JSON object with "sentences": [...]')
        unknown = set(body) - {"sentences", "attention", *STEERING, *OPTIONS}
        if unknown:
            raise BadRequest(400, f"unknown keys {sorted(unknown)}; known: sentences, attention, "
                                  f"{', '.join(STEERING + OPTIONS)}")
        if not isinstance(body["sentences"], list):
            raise BadRequest(400, "sentences: expected a list of strings")
        try:
            sentences = checked_sentences(body["sentences"])
        except (TypeError, ValueError) as err:
            raise BadRequest(400, str(err)) from None
        if len(sentences) > limits.max_sentences:
            raise BadRequest(413, f"sentences: {len(sentences)} in one request, at most {limits.max_sentences}")
        if len(sentences) > limits.max_queued_sentences:  # it would never fit: no use retrying
            raise BadRequest(413, f"sentences: {len(sentences)} in one request, more than this server "
                                  f"queues ({limits.max_queued_sentences})")
        for i, sentence in enumerate(sentences):
            if len(sentence) > limits.max_chars:
                raise BadRequest(413, f"sentences[{i}]: {len(sentence)} characters, at most {limits.max_chars}")
        options = {k: body[k] for k in OPTIONS if body.get(k) is not None}  # null: the run's setting
        try:  # an n_best wider than the beam widens it here, as everywhere
            decode = self.translator.settings(**options)
        except ConfigError as err:
            raise BadRequest(400, str(err)) from None
        if not isinstance(body.get("attention", False), bool):
            raise BadRequest(400, "attention: expected true or false")
        if decode.max_length > limits.max_output_pieces:
            raise BadRequest(400, f"max_length: {decode.max_length} is more than this server's "
                                  f"--max-output-pieces ({limits.max_output_pieces})")
        if decode.max_length_ratio > limits.max_length_ratio_cap:
            raise BadRequest(400, f"max_length_ratio: {decode.max_length_ratio} is more than this "
                                  f"server's --max-length-ratio-cap ({limits.max_length_ratio_cap})")
        options["max_length"] = decode.max_length or limits.max_output_pieces
        steering = {key: body[key] for key in STEERING if body.get(key) is not None}
        try:  # prefixes and constraints checked (and their lengths) before the request queues
            job = self.translator.prepared(sentences, **steering, **options)
        except (ConfigError, TypeError) as err:
            raise BadRequest(400, str(err)) from None
        for i, phrases in zip(job.todo, job.phrases or []):
            if sum(map(len, phrases)) > limits.max_constraint_pieces:
                raise BadRequest(400, f"constraints[{i}]: {sum(map(len, phrases))} target pieces, at most "
                                      f"{limits.max_constraint_pieces} (--max-constraint-pieces)")
        if body.get("attention", False) or decode.markup == "keep":  # markup: keep reads the attention
            megabytes = attention_megabytes(sentences, replace(decode, max_length=options["max_length"]))
            if megabytes > limits.max_attention_mb:
                raise BadRequest(413, f"attention: keeping it for this request would take about "
                                      f"{megabytes:,.0f} MB, at most {limits.max_attention_mb} "
                                      "(--max-attention-mb); send fewer or shorter sentences")
        return Job(sentences, options, body.get("attention", False), steering,
                   asyncio.get_running_loop().create_future())

    # -- batching -----------------------------------------------------------------------------

    async def _batcher(self) -> None:
        """Decode the requests in batches of slices: each batch shares --max-batch-sentences
        among the waiting requests (with the options of the one served least recently) round-robin, so a large
        request is decoded a slice at a time beside small ones, and between batches a
        request whose client has gone or whose deadline has passed is dropped."""
        loop = asyncio.get_running_loop()
        active = []
        while True:
            if not active:  # idle: wait for a request, and a moment for others to join it
                active.append(await self.queue.get())
                await asyncio.sleep(self.limits.batch_wait_ms / 1000)
            while not self.queue.empty():
                active.append(self.queue.get_nowait())
            active = [job for job in active if self._wanted(job, loop.time())]
            if active:
                batch = self._slices(active)
                try:
                    await self._run(loop, batch)
                except Exception as err:  # a bug here must not stop the server: fail this batch
                    for job, _ in batch:
                        self._fail(job, err)
                served = [job for job, _ in batch]
                active = [job for job in active if job not in served] + served  # round-robin
                active = [job for job in active if job.left]

    def _wanted(self, job: Job, now: float) -> bool:
        """False (and the job ended) for a request whose client hung up or whose time is up."""
        if job.gone() or job.done.done():  # nobody to answer: its remaining sentences are not decoded
            self.abandoned += 1
            job.done.cancel()
        elif now > job.deadline:
            job.done.done() or job.done.set_exception(TimeoutError())
        else:
            return True
        self.queued -= job.left
        return False

    def _fail(self, job: Job, err: Exception) -> None:
        self.queued -= job.left
        job.next = len(job.sentences)
        job.done.done() or job.done.set_exception(err)

    def _slices(self, active: list[Job]) -> list[tuple[Job, int]]:
        """(job, sentences) to decode now: the jobs with the options of the one served least
        recently, each getting an equal share of the batch first, the rest in turn."""
        same = [job for job in active if job.key == active[0].key]
        budget = self.limits.max_batch_sentences
        share = max(1, self.limits.max_batch_sentences // len(same))
        taken = {id(job): 0 for job in same}
        for cap in (share, budget):  # equal shares, then what is left over, in order
            for job in same:
                more = min(job.left - taken[id(job)], cap - taken[id(job)], budget)
                if more > 0:
                    taken[id(job)] += more
                    budget -= more
        return [(job, taken[id(job)]) for job in same if taken[id(job)] or not job.left]  # [] too

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Job, int]]) -> None:
        sentences = [s for job, n in batch for s in job.sentences[job.next:job.next + n]]
        steering = {key: [entry for job, n in batch
                          for entry in job.steering.get(key, [None] * len(job.sentences))[job.next:job.next + n]]
                    for key in STEERING if any(key in job.steering for job, _ in batch)}
        try:
            results = await loop.run_in_executor(self.model_thread, self._decode, sentences, steering,
                                                 batch[0][0])
        except Exception as err:
            for job, n in batch:
                self._fail(job, err)
            return
        self.batches += 1
        start = 0
        for job, n in batch:
            job.parts.append({k: v[start:start + n] for k, v in results.items()})
            start = start + n
            job.next = job.next + n
            self.queued -= n
            if not job.left:
                self.requests += 1
                merged = {k: [x for part in job.parts for x in part[k]] for k in job.parts[0]}
                job.done.done() or job.done.set_result(merged)

    def _decode(self, sentences: list[str], steering: dict, job: Job) -> dict:
        """In the model's thread: the group's sentences in one call (the translator batches them)."""
        translator = self.translator
        found = translator.hypotheses(sentences, keep_attention=job.attention,
                                      batch_size=self.limits.max_batch_sentences, **steering, **job.options)
        texts = translator.texts(sentences, found, **job.options)
        results = {"translations": [t[0] if t else "" for t in texts]}
        if job.options.get("n_best", 1) > 1:
            results["n_best"] = [[{"translation": t, "score": h.score} for t, h in zip(ts, hyps)]
                                 for ts, hyps in zip(texts, found)]
        if job.attention:
            keep = translator.settings(**job.options).markup == "keep"
            plain = [markup.strip(s)[0] for s in sentences] if keep else sentences
            results["attention"] = [translator.alignment(s, hyps[0], **job.options) if hyps else None
                                    for s, hyps in zip(plain, found)]
        return results


def attention_megabytes(sentences: list[str], decode) -> float:
    """An upper bound of what keeping the attention weights costs for ``sentences``: 4 bytes
    for each (hypothesis row, output step, source piece); a source has at most one piece
    per UTF-8 byte, plus a word start and the end marker."""
    rows = 1 if decode.beam_size == 1 else 2 * decode.beam_size
    total = 0
    for sentence in sentences:
        word_start = 1
        source = with_end_marker(len(sentence.encode("utf-8")) + word_start)
        steps = max_output_lengths(np.array([source]), decode.max_length_ratio, decode.max_length)[0]
        total += rows * steps * source * 4
    return total / 2**20


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, checkpoint: str = "best",
          device: str = "cpu", limits: Limits = Limits()) -> None:
    """Load the run and serve it until interrupted."""
    if web is None:
        raise NmtError("nmt-serve needs aiohttp: pip install 'nmt[serve]'")
    translator = Translator.load(run_dir, checkpoint, device)
    print(f"nmt-serve: {run_dir} ({translator.run.checkpoint.name}, step {translator.run.step}) "
          f"on http://{host}:{port}/", flush=True)
    web.run_app(Server(translator, limits).app(), host=host, port=port, print=None, access_log=None)
