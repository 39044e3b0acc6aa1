"""``nmt-serve``: translations over HTTP (aiohttp, the README's endpoints), batched.

``Parser``: a body into a checked ``Job`` or a ``BadRequest`` (every cap, before it queues);
``Scheduler``: which slices of the waiting jobs to decode next; ``Server``: the handlers and the
decoding loop. A translation does not depend on its batch (``nmt.invariant``)."""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

try:
    from aiohttp import web
except ImportError:  # an optional extra: pip install 'nmt[serve]'
    web = None

from nmt import markup
from nmt.config import Range, decode_fields, option
from nmt.data import with_end_marker
from nmt.directions import directions, label
from nmt.errors import ConfigError, NmtError
from nmt.search import max_output_lengths
from nmt.translate import Prepared, Translator, checked_sentences

OPTIONS = tuple(option.name for option in decode_fields("served"))  # batch_size is the server's
STEERING = ("constraints", "prefix")  # per sentence: Translator.hypotheses' keywords
PAGE = Path(__file__).with_name("serve_page.html")
_count_option = partial(option, bounds=Range(1, 1 << 30))
_amount_option = partial(option, bounds=Range(0.0, 60_000.0))  # ms, s and a ratio


@dataclass
class Limits:
    """What one request and the whole server may cost; each is an ``nmt-serve`` flag."""
    max_body_bytes: int = _count_option(1 << 20, "a request's JSON (413 beyond)")
    max_sentences: int = _count_option(1000, "sentences in one request (413 beyond)")
    max_chars: int = _count_option(2000, "characters in one sentence (413 beyond)")
    max_batch_sentences: int = _count_option(256, "sentences decoded together, from all requests")
    batch_wait_ms: float = _amount_option(5.0, "how long a batch waits for more requests")
    max_output_pieces: int = _count_option(512, "the longest output, also the default (400 beyond)")
    max_length_ratio_cap: float = _amount_option(4.0, "the largest max_length_ratio a request may "
                                                "ask (400 beyond)")
    max_attention_mb: int = _count_option(256, 'what "attention": true may keep for one request '
                                         "(413 beyond)")
    max_queued_sentences: int = _count_option(10_000, "waiting to be decoded (503 with Retry-After "
                                             "beyond)")
    max_constraint_pieces: int = _count_option(64, "target pieces of one sentence's constraints "
                                              "(400 beyond)")
    request_timeout_s: float = _amount_option(60.0, "a request not translated by then gets a 504")

    def __post_init__(self):
        for limit in fields(self):
            limit.metadata["range"].check(f"--{limit.name.replace('_', '-')}",
                                          getattr(self, limit.name))


class Refusal(Exception):
    """An answer other than 200: its HTTP status, a one-line message and any headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class BadRequest(Refusal):
    """What the request itself asks is wrong or too much (400, 413)."""


@dataclass(eq=False)  # a job is itself: compared by identity
class Job:
    """One checked request: its sentences, decode options and where its decoding stands."""
    sentences: list[str]
    options: dict
    attention: bool = False
    steering: dict = field(default_factory=dict)  # STEERING keys: one entry per sentence
    gone: Callable[[], bool] = lambda: False  # whether the client has hung up
    deadline: float = float("inf")  # the clock's time by which it must be answered
    next: int = 0  # sentences handed to the model so far
    parts: list[dict] = field(default_factory=list)  # the results of its slices decoded so far
    reply: Any = field(default=None, repr=False)  # the server's future; the scheduler leaves it

    @property
    def left(self) -> int:
        return len(self.sentences) - self.next

    @property
    def key(self) -> tuple:
        """Jobs with the same key may share a batch."""
        return tuple(sorted(self.options.items())), self.attention

    def result(self) -> dict:
        """Its slices' results joined, once every sentence is decoded."""
        return {k: [x for part in self.parts for x in part[k]] for k in self.parts[0]}


Slice = tuple[Job, int]  # a job and how many of its next sentences to decode


class Round(NamedTuple):
    """What to do now: decode ``slices`` in one batch; ``late`` and ``gone`` (their clients hung
    up) jobs were dropped undecoded."""
    slices: list[Slice]
    late: list[Job]
    gone: list[Job]


class Scheduler:
    """The waiting jobs (at most ``max_queued`` sentences); pure: the caller passes ``now``.
    Each round shares ``batch_sentences`` among the jobs with the options of the one served
    least recently, an equal share each, then what is left in turn; served jobs go to the back
    (round robin). Jobs whose client is gone or whose deadline passed are dropped first."""

    def __init__(self, batch_sentences: int, max_queued: int, timeout_s: float):
        self.batch_sentences, self.max_queued = batch_sentences, max_queued
        self.timeout_s = timeout_s
        self.jobs: list[Job] = []  # least recently served (or arrived) first
        self.queued = 0  # sentences waiting to be decoded
        self.requests = self.batches = self.abandoned = 0  # done, decoded, dropped: gone

    def add(self, job: Job, now: float) -> bool:
        """Queue ``job``, due ``timeout_s`` from ``now``; False (nothing queued) if it won't fit."""
        if self.queued + len(job.sentences) > self.max_queued:
            return False
        job.deadline = now + self.timeout_s
        self.jobs.append(job)
        self.queued += len(job.sentences)
        return True

    def take(self, now: float) -> Round:
        """Drop the jobs gone or late by ``now``; the slices to decode next (a job with no
        sentences gets a slice of 0, which completes it)."""
        gone, late, waiting = [], [], []
        for job in self.jobs:
            (gone if job.gone() else late if now > job.deadline else waiting).append(job)
        self.queued -= sum(job.left for job in gone + late)
        self.abandoned += len(gone)
        self.jobs = waiting
        return Round(self._slices(), late, gone)

    def _slices(self) -> list[Slice]:
        if not self.jobs:
            return []
        same = [job for job in self.jobs if job.key == self.jobs[0].key]
        budget = self.batch_sentences
        share = max(1, budget // len(same))
        taken = {id(job): 0 for job in same}
        for cap in (share, budget):  # equal shares, then what is left over, in order
            for job in same:
                more = min(job.left - taken[id(job)], cap - taken[id(job)], budget)
                if more > 0:
                    taken[id(job)] += more
                    budget -= more
        return [(job, taken[id(job)]) for job in same if taken[id(job)] or not job.left]

    def decoded(self, slices: list[Slice], results: dict) -> list[Job]:
        """Record ``results`` (lists, an entry per sentence of the slices); the jobs now done."""
        self.batches += 1
        start = 0
        for job, n in slices:
            job.parts.append({k: v[start:start + n] for k, v in results.items()})
            start, job.next, self.queued = start + n, job.next + n, self.queued - n
        self._served(slices)
        done = [job for job, _ in slices if not job.left]
        self.requests += len(done)
        return done

    def failed(self, slices: list[Slice]) -> None:
        """Drop the slices' jobs, undecoded: their batch failed."""
        for job, _ in slices:
            self.queued -= job.left
            job.next = len(job.sentences)
        self._served(slices)

    def _served(self, slices: list[Slice]) -> None:
        served = [job for job, _ in slices]  # to the back; the complete ones leave
        self.jobs = [job for job in self.jobs if job not in served] + [j for j in served if j.left]


def _beyond_caps(decode, limits: Limits) -> list[tuple[str, float, str, float]]:
    """(option, value, flag, cap) for each output-length setting beyond the server's cap."""
    caps = [("max_length", decode.max_length, "--max-output-pieces", limits.max_output_pieces),
            ("max_length_ratio", decode.max_length_ratio, "--max-length-ratio-cap",
             limits.max_length_ratio_cap)]
    return [cap for cap in caps if cap[1] > cap[3]]


class Parser:
    """Request bodies into checked jobs: every key, option and cap is checked here, once."""

    def __init__(self, translator: Translator, limits: Limits):
        self.translator, self.limits = translator, limits
        beyond = _beyond_caps(translator.decode, limits)  # what a request that sets nothing gets
        if beyond:
            raise ConfigError("the run decodes with " + "; ".join(
                f"{key} {value}, beyond {flag} {cap}" for key, value, flag, cap in beyond))

    def __call__(self, raw: bytes | None) -> Job:
        """``raw``: the body, None if it was larger than --max-body-bytes (aiohttp stopped)."""
        if raw is None:
            raise BadRequest(413, f"request body: larger than {self.limits.max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError too
            raise BadRequest(400, f"request body: not valid JSON ({err})") from None
        if not isinstance(body, dict) or "sentences" not in body:
            raise BadRequest(400, 'request body: expected a JSON object with "sentences": [...]')
        unknown = set(body) - {"sentences", "attention", *STEERING, *OPTIONS}
        if unknown:
            raise BadRequest(400, f"unknown keys {sorted(unknown)}; known: sentences, attention, "
                                  f"{', '.join(STEERING + OPTIONS)}")
        if not isinstance(body["sentences"], list):
            raise BadRequest(400, "sentences: expected a list of strings")
        try:  # the translator's own checks name what is wrong
            return self._job(body)
        except (ConfigError, TypeError, ValueError) as err:
            raise BadRequest(400, str(err)) from None

    def _job(self, body: dict) -> Job:
        limits = self.limits
        sentences = checked_sentences(body["sentences"])
        for cap, beyond in ((limits.max_sentences, f"at most {limits.max_sentences}"),
                            (limits.max_queued_sentences,  # it would never fit: no use retrying
                             f"more than this server queues ({limits.max_queued_sentences})")):
            if len(sentences) > cap:
                raise BadRequest(413, f"sentences: {len(sentences)} in one request, {beyond}")
        for i, sentence in enumerate(sentences):
            if len(sentence) > limits.max_chars:
                raise BadRequest(413, f"sentences[{i}]: {len(sentence)} characters, at most "
                                      f"{limits.max_chars}")
        options = {k: body[k] for k in OPTIONS if body.get(k) is not None}  # null: the run's
        decode = self.translator.settings(**options)  # a wider n_best widens the beam, as anywhere
        attention = body.get("attention", False)
        if not isinstance(attention, bool):
            raise BadRequest(400, "attention: expected true or false")
        for key, value, flag, cap in _beyond_caps(decode, limits)[:1]:
            raise BadRequest(400, f"{key}: {value} is more than this server's {flag} ({cap})")
        options["max_length"] = decode.max_length or limits.max_output_pieces
        steering = {key: body[key] for key in STEERING if body.get(key) is not None}
        prepared = self.translator.prepared(sentences, **steering, **options)  # and their lengths
        self._costs(sentences, replace(decode, max_length=options["max_length"]), prepared,
                    attention)
        return Job(sentences, options, attention, steering)

    def _costs(self, sentences: list[str], decode, prepared: Prepared, attention: bool) -> None:
        limits = self.limits
        for i, phrases in zip(prepared.todo, prepared.phrases or []):
            if sum(map(len, phrases)) > limits.max_constraint_pieces:
                raise BadRequest(400, f"constraints[{i}]: {sum(map(len, phrases))} target pieces, "
                                      f"at most {limits.max_constraint_pieces} "
                                      "(--max-constraint-pieces)")
        if attention or decode.markup == "keep":  # markup: keep reads the attention
            megabytes = attention_megabytes(sentences, decode)
            if megabytes > limits.max_attention_mb:
                raise BadRequest(413, f"attention: keeping it for this request would take about "
                                      f"{megabytes:,.0f} MB, at most {limits.max_attention_mb} "
                                      "(--max-attention-mb); send fewer or shorter sentences")


def attention_megabytes(sentences: list[str], decode) -> float:
    """An upper bound of what keeping the attention weights costs for ``sentences``: 4 bytes
    for each (hypothesis row, output step, source piece); a source has at most one piece
    per UTF-8 byte, plus a word start and the end marker."""
    rows = 1 if decode.beam_size == 1 else 2 * decode.beam_size
    total = 0
    for sentence in sentences:
        source = with_end_marker(len(sentence.encode("utf-8")) + 1)  # + a word start
        steps = max_output_lengths(np.array([source]), decode.max_length_ratio,
                                   decode.max_length)[0]
        total += rows * steps * source * 4
    return total / 2**20


class Server:
    """The aiohttp application: thin handlers around ``Parser`` and ``Scheduler``, and the loop
    that decodes the scheduler's batches in the model's one thread."""

    def __init__(self, translator: Translator, limits: Limits = Limits()):
        self.translator, self.limits = translator, limits
        self.parse = Parser(translator, limits)
        self.scheduler = Scheduler(limits.max_batch_sentences, limits.max_queued_sentences,
                                   limits.request_timeout_s)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="nmt-model")  # one model user
        self.arrived: asyncio.Event | None = None  # set when a job is queued

    def app(self) -> web.Application:
        @web.middleware
        async def refusals(request: web.Request, handler) -> web.Response:
            """Every answer other than 200, in one place: a one-line JSON error."""
            try:
                return await handler(request)
            except Refusal as err:
                return web.json_response({"error": str(err)}, status=err.status,
                                         headers=err.headers)

        app = web.Application(client_max_size=self.limits.max_body_bytes, middlewares=[refusals])
        app.add_routes([web.get("/", self.page), web.get("/health", self.health),
                        web.get("/info", self.info), web.post("/translate", self.translate)])
        app.cleanup_ctx.append(self._batching)
        return app

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html")

    async def health(self, request: web.Request) -> web.Response:
        s = self.scheduler
        return web.json_response({"status": "ok", "requests": s.requests, "batches": s.batches,
                                  "queued_sentences": s.queued, "abandoned": s.abandoned})

    async def info(self, request: web.Request) -> web.Response:
        run, translator = self.translator.run, self.translator
        decode = {k: v for k, v in asdict(translator.decode).items() if k != "batch_size"}
        return web.json_response({
            "src_lang": run.cfg.data.src_lang, "tgt_lang": run.cfg.data.tgt_lang,
            "directions": [label(d) for d in directions(run.cfg.data)],
            "checkpoint": str(run.checkpoint), "step": run.step, "int8": translator.int8,
            "engine": str(translator.engine), "decode": decode, "limits": asdict(self.limits)})

    async def translate(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raw = None
        job = self.parse(raw)
        loop = asyncio.get_running_loop()
        job.gone = lambda: request.transport is None or request.transport.is_closing()
        job.reply = loop.create_future()
        if not self.scheduler.add(job, loop.time()):
            raise Refusal(503, f"busy: {self.scheduler.queued} sentences wait to be decoded "
                               f"(at most {self.limits.max_queued_sentences}); try again",
                          {"Retry-After": "1"})
        self.arrived.set()
        try:  # the deadline holds even while a batch is being decoded
            answer = await asyncio.wait_for(asyncio.shield(job.reply), job.deadline - loop.time())
        except (TimeoutError, asyncio.TimeoutError):  # one type from Python 3.11 on
            job.reply.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise Refusal(504, f"not translated within --request-timeout-s "
                               f"({self.limits.request_timeout_s:g} s); try again") from None
        except Exception as err:  # a failure inside the model: this request fails, not the server
            raise Refusal(500, f"translation failed ({type(err).__name__}: {err})") from None
        return web.json_response(answer)

    async def _batching(self, app: web.Application):
        self.arrived = asyncio.Event()
        task = asyncio.create_task(self._batcher())
        yield
        task.cancel()
        self.model_thread.shutdown(wait=False, cancel_futures=True)

    async def _batcher(self) -> None:
        """Decode rounds while jobs wait; when idle, wait for one and --batch-wait-ms (for
        others to share its batch)."""
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            await asyncio.sleep(self.limits.batch_wait_ms / 1000)
            self.arrived.clear()  # a job queued from here on sets it again
            while slices := self._round(loop.time()):
                try:
                    results = await loop.run_in_executor(self.model_thread, self._decode, slices)
                    done = self.scheduler.decoded(slices, results)
                except Exception as err:  # the model's failure (or a bug) fails this batch only
                    self.scheduler.failed(slices)
                    for job, _ in slices:
                        job.reply.done() or job.reply.set_exception(err)
                    continue
                for job in done:
                    job.reply.done() or job.reply.set_result(job.result())

    def _round(self, now: float) -> list[Slice]:
        """The scheduler's next slices; the dropped jobs answered (the gone ones cancelled)."""
        plan = self.scheduler.take(now)
        for job in plan.late:
            job.reply.done() or job.reply.set_exception(TimeoutError())
        for job in plan.gone:
            job.reply.cancel()
        return plan.slices

    def _decode(self, slices: list[Slice]) -> dict:
        """In the model's thread: the answer's lists for the slices' sentences, in one call."""
        sentences = [s for job, n in slices for s in job.sentences[job.next:job.next + n]]
        steering = {key: [entry for job, n in slices for entry in
                          job.steering.get(key, [None] * len(job.sentences))[job.next:job.next + n]]
                    for key in STEERING if any(key in job.steering for job, _ in slices)}
        translator, job = self.translator, slices[0][0]
        found = translator.hypotheses(sentences, keep_attention=job.attention,
                                      batch_size=self.limits.max_batch_sentences,
                                      **steering, **job.options)
        texts = translator.texts(sentences, found, **job.options)
        results = {"translations": [t[0] if t else "" for t in texts]}
        if job.options.get("n_best", 1) > 1:
            results["n_best"] = [[{"translation": t, "score": h.score} for t, h in zip(ts, hyps)]
                                 for ts, hyps in zip(texts, found)]
        if job.attention:
            keep = translator.settings(**job.options).markup == "keep"
            plain = [markup.strip(s)[0] for s in sentences] if keep else sentences
            results["attention"] = [translator.alignment(s, hyps[0], **job.options) if hyps
                                    else None for s, hyps in zip(plain, found)]
        return results


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, checkpoint: str = "best",
          device: str = "cpu", limits: Limits = Limits()) -> None:
    """Load the run and serve it until interrupted."""
    if web is None:
        raise NmtError("nmt-serve needs aiohttp: pip install 'nmt[serve]'")
    translator = Translator.load(run_dir, checkpoint, device)
    print(f"nmt-serve: {run_dir} ({translator.run.checkpoint.name}, step {translator.run.step}) "
          f"on http://{host}:{port}/", flush=True)
    web.run_app(Server(translator, limits).app(), host=host, port=port, print=None,
                access_log=None)
