"""``nmt-serve``: translations over HTTP (aiohttp), with requests batched together.

- ``POST /translate`` ``{"sentences": [...], "beam_size": 5, "n_best": 1, "length_penalty": 1.0,
  "max_length_ratio": 2.0, "attention": false}`` (every key but ``sentences`` optional; also
  ``length_penalty_type``, ``min_length``, ``no_repeat_ngram_size``) ->
  ``{"translations": [...]}``, plus ``"n_best": [[{"translation", "score"}, ...], ...]`` when
  ``n_best`` > 1 and ``"attention": [{"source", "target", "weights"}, ...]`` when asked.
- ``GET /health`` -> ``{"status": "ok", "requests": ..., "batches": ...}``.
- ``GET /info`` -> languages, checkpoint, step, decoding settings, limits.
- ``GET /`` -> a page to type text and see its translation and attention.

Dynamic batching: one task takes the first waiting request, gathers those that
arrive within ``batch_wait_ms`` (up to ``max_batch_sentences`` sentences),
and decodes each group with the same settings as one batch in the model's
thread; meanwhile new requests queue for the next batch. A sentence's
translation does not depend on its batch (``nmt.search``), so every request
gets exactly what it would get alone. Bad requests get a 4xx with a one-line
JSON error; nothing a client sends stops the server.
"""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    from aiohttp import web
except ImportError:  # an optional extra: pip install 'nmt[serve]'
    web = None

from nmt.config import check_range
from nmt.errors import ConfigError, NmtError
from nmt.translate import Translator, checked_sentences

OPTIONS = ("beam_size", "n_best", "length_penalty", "length_penalty_type", "max_length_ratio",
           "min_length", "no_repeat_ngram_size")  # batch_size is the server's
PAGE = Path(__file__).with_name("serve_page.html")


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20  # a request's JSON (413 beyond)
    max_sentences: int = 1000  # sentences in one request (413 beyond)
    max_chars: int = 2000  # characters in one sentence (413 beyond)
    max_batch_sentences: int = 256  # sentences decoded together, from all requests
    batch_wait_ms: float = 5.0  # how long a batch waits for more requests

    def __post_init__(self):
        for name, value in vars(self).items():
            check_range(f"--{name.replace('_', '-')}", value, (1, 1 << 30) if isinstance(value, int)
                        else (0.0, 60_000.0))


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    sentences: list[str]
    options: dict
    attention: bool
    done: asyncio.Future = field(repr=False)

    @property
    def key(self) -> tuple:
        return tuple(sorted(self.options.items())), self.attention


class Server:
    def __init__(self, translator: Translator, limits: Limits = Limits()):
        self.translator, self.limits = translator, limits
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="nmt-model")  # one model user
        self.queue: asyncio.Queue[Job] | None = None
        self.requests = self.batches = 0

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
        return web.json_response({"status": "ok", "requests": self.requests, "batches": self.batches})

    async def info(self, request: web.Request) -> web.Response:
        run = self.translator.run
        return web.json_response({
            "src_lang": run.cfg.data.src_lang, "tgt_lang": run.cfg.data.tgt_lang,
            "checkpoint": str(run.checkpoint), "step": run.step, "int8": self.translator.int8,
            "decode": {k: v for k, v in asdict(self.translator.decode).items() if k != "batch_size"},
            "limits": asdict(self.limits)})

    async def translate(self, request: web.Request) -> web.Response:
        try:
            job = self._job(await self._json(request))
        except BadRequest as err:
            return web.json_response({"error": str(err)}, status=err.status)
        await self.queue.put(job)
        try:
            return web.json_response(await job.done)
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
        unknown = set(body) - {"sentences", "attention", *OPTIONS}
        if unknown:
            raise BadRequest(400, f"unknown keys {sorted(unknown)}; known: sentences, attention, "
                                  f"{', '.join(OPTIONS)}")
        if not isinstance(body["sentences"], list):
            raise BadRequest(400, "sentences: expected a list of strings")
        try:
            sentences = checked_sentences(body["sentences"])
        except (TypeError, ValueError) as err:
            raise BadRequest(400, str(err)) from None
        if len(sentences) > limits.max_sentences:
            raise BadRequest(413, f"sentences: {len(sentences)} in one request, at most {limits.max_sentences}")
        for i, sentence in enumerate(sentences):
            if len(sentence) > limits.max_chars:
                raise BadRequest(413, f"sentences[{i}]: {len(sentence)} characters, at most {limits.max_chars}")
        options = {k: body[k] for k in OPTIONS if body.get(k) is not None}  # null: the run's setting
        try:
            self.translator.settings(**options)
        except ConfigError as err:
            raise BadRequest(400, str(err)) from None
        if not isinstance(body.get("attention", False), bool):
            raise BadRequest(400, "attention: expected true or false")
        if options.get("n_best", 1) > 1 and "beam_size" not in options:  # wide enough for the n best
            options["beam_size"] = max(options["n_best"], self.translator.decode.beam_size)
        return Job(sentences, options, body.get("attention", False), asyncio.get_running_loop().create_future())

    # -- batching -----------------------------------------------------------------------------

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            count, deadline = len(jobs[0].sentences), loop.time() + self.limits.batch_wait_ms / 1000
            while count < self.limits.max_batch_sentences:
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), max(deadline - loop.time(), 0)))
                except asyncio.TimeoutError:
                    break
                count += len(jobs[-1].sentences)
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                await self._run(loop, group)

    async def _run(self, loop: asyncio.AbstractEventLoop, group: list[Job]) -> None:
        sentences = [s for job in group for s in job.sentences]
        try:
            results = await loop.run_in_executor(self.model_thread, self._decode, sentences, group[0])
        except Exception as err:
            for job in group:
                job.done.done() or job.done.set_exception(err)
            return
        self.requests += len(group)
        self.batches += 1
        start = 0
        for job in group:
            part = {k: v[start:start + len(job.sentences)] for k, v in results.items()}
            start += len(job.sentences)
            job.done.done() or job.done.set_result(part)

    def _decode(self, sentences: list[str], job: Job) -> dict:
        """In the model's thread: the group's sentences in one call (the translator batches them)."""
        translator = self.translator
        found = translator.hypotheses(sentences, keep_attention=job.attention,
                                      batch_size=self.limits.max_batch_sentences, **job.options)
        texts = [[translator.tgt_vocab.decode([h.tokens])[0] for h in hyps] for hyps in found]
        results = {"translations": [t[0] if t else "" for t in texts]}
        if job.options.get("n_best", 1) > 1:
            results["n_best"] = [[{"translation": t, "score": h.score} for t, h in zip(ts, hyps)]
                                 for ts, hyps in zip(texts, found)]
        if job.attention:
            results["attention"] = [translator.alignment(s, hyps[0]) if hyps else None
                                    for s, hyps in zip(sentences, found)]
        return results


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, checkpoint: str = "best",
          device: str = "cpu", limits: Limits = Limits()) -> None:
    """Load the run and serve it until interrupted."""
    if web is None:
        raise NmtError("nmt-serve needs aiohttp: pip install 'nmt[serve]'")
    translator = Translator.load(run_dir, checkpoint, device)
    print(f"nmt-serve: {run_dir} ({translator.run.checkpoint.name}, step {translator.run.step}) "
          f"on http://{host}:{port}/", flush=True)
    web.run_app(Server(translator, limits).app(), host=host, port=port, print=None, access_log=None)
