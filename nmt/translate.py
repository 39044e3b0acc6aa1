"""Translating raw text with a trained run: the Python API behind ``nmt-translate``."""
from __future__ import annotations

import hashlib
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import logging

import torch

from nmt import export, loading
from nmt.loading import LoadedRun, load_run
from nmt.device import fast_int8, pick_device
from nmt.config import DecodeConfig, decode_settings
from nmt.ensemble import Ensemble
from nmt.errors import CheckpointError, ConfigError
from nmt.graphs import graphed
from nmt.data import batch_of, by_length
from nmt.directions import for_target, source_tags
from nmt.quantize import quantize_int8
from nmt.search import (DecodableModel, Hypothesis, beam_search, greedy_search, max_output_lengths,
                        sample_search)
from nmt.steer import Steering
from nmt import markup
from nmt.vocab import END, one_line

log = logging.getLogger("nmt")


def decode_corpus(model: DecodableModel, src_ids: list[list[int]], decode: DecodeConfig,
                  device: torch.device | str = "cpu", keep_attention: bool = False,
                  never: tuple[int, ...] = (), prefixes: list[list[int]] | None = None,
                  constraints: list[list[list[int]]] | None = None) -> list[list[Hypothesis]]:
    """Each sentence's n-best list, in input order, decoded in batches of similar length.
    ``never``: pieces never emitted; ``prefixes`` and ``constraints`` (beam search only): one
    entry per sentence, or None (``nmt.steer``)."""
    if decode.cuda_graphs:
        model = graphed(model)
    if decode.samples:
        return sample_corpus(model, src_ids, decode, device, keep_attention, never, prefixes)

    def search(index: list[int]) -> list[list[Hypothesis]]:
        batch = batch_of([src_ids[i] for i in index]).to(device)
        steer = _steering(index, prefixes, constraints, device)
        if decode.beam_size == 1 and not constraints:
            return [[hyp] for hyp in greedy_search(model, batch, decode, never, keep_attention,
                                                   steer)]
        return beam_search(model, batch, decode, never, keep_attention, steer)

    return by_length([len(ids) for ids in src_ids], decode.batch_size, search)


def _steering(index: list[int], prefixes: list[list[int]] | None,
              constraints: list[list[list[int]]] | None, device) -> Steering | None:
    """The steering of sentences ``index``, None when nothing steers any sentence."""
    if not prefixes and not constraints:
        return None
    return Steering.of([prefixes[i] for i in index] if prefixes else [[] for _ in index],
                       [constraints[i] for i in index] if constraints else [[] for _ in index],
                       device)


def sample_corpus(model: DecodableModel, src_ids: list[list[int]], decode: DecodeConfig,
                  device: torch.device | str = "cpu", keep_attention: bool = False,
                  never: tuple[int, ...] = (), prefixes: list[list[int]] | None = None
                  ) -> list[list[Hypothesis]]:
    """``decode.samples`` random translations per sentence; sample r is seeded by
    (decode.seed, the sentence's pieces, r): the same in any batch."""
    draws = [(i, r) for i in range(len(src_ids)) for r in range(decode.samples)]  # sentence, sample

    def sample(index: list[int]) -> list[Hypothesis]:
        batch = batch_of([src_ids[draws[d][0]] for d in index]).to(device)
        seeds = [int.from_bytes(hashlib.blake2b(f"{decode.seed}|{src_ids[i]}|{r}".encode(),
                                                digest_size=8).digest(), "big")
                 for i, r in (draws[d] for d in index)]
        steer = _steering([draws[d][0] for d in index], prefixes, None, device)
        return sample_search(model, batch, decode, seeds, never, keep_attention, steer)

    found = by_length([len(src_ids[i]) for i, _ in draws], decode.batch_size, sample)
    return [found[i * decode.samples:(i + 1) * decode.samples] for i in range(len(src_ids))]


@dataclass
class Prepared:
    """Sentences checked and encoded for decoding (``Translator.prepared``)."""
    sentences: list[str]
    decode: DecodeConfig
    todo: list[int]  # the sentences that are not blank
    ids: list[list[int]]  # their source pieces
    prefixes: list[list[int]] | None  # their prefixes' target pieces
    phrases: list[list[list[int]]] | None  # their constraints' target pieces
    never: tuple[int, ...]  # pieces search may not emit
    keep_markup: bool


@dataclass(frozen=True)
class Engine:
    """What runs a translator's model: ``runtime`` "pytorch" or "onnxruntime" (nmt's own search
    either way), ``precision`` "float32" or "int8"."""
    runtime: str
    precision: str

    def __str__(self) -> str:
        return f"{self.runtime} {self.precision}"


class Translator:
    """Raw text in, raw text out:
    ``Translator.load("runs/demo").translate(["Ein Hund läuft."], beam_size=5)``."""

    def __init__(self, run: LoadedRun, device: torch.device | str = "cpu",
                 engine: Engine = Engine("pytorch", "float32")):
        self.run = run
        self.device = device
        self.engine = engine  # what runs the model: reported by the API and the server, logged
        self.model = run.model
        self.src_vocab = run.src_vocab
        self.tgt_vocab = run.tgt_vocab
        self.decode = run.cfg.decode

    @property
    def int8(self) -> bool:
        """Whether the model decodes with int8 products."""
        return self.engine.precision == "int8"

    @classmethod
    def load(cls, run_dir: str | Path, checkpoint: str = "best", device: str = "cpu",
             int8: bool = False, ensemble: Sequence[str] = (), backend: str = "torch"
             ) -> "Translator":
        """A run directory's checkpoint (best, last, averaged, step-N or a path) or a model
        folder. ``backend="onnx"``: a model folder's ONNX graphs on onnxruntime;
        ``ensemble``: more models ("RUN_DIR" or "RUN_DIR:CHECKPOINT") decoded with this one;
        ``int8``: int8 decoder products (``_engine``). ``engine`` says what runs."""
        if backend not in ("torch", "onnx"):
            raise ConfigError(f"backend: {backend!r}; choose torch or onnx")
        if int8 and ensemble:
            raise ConfigError("int8 decoding of an ensemble is not supported; drop --int8")
        device = str(pick_device(str(device)))  # "auto" included, as training takes it
        if int8 and backend == "torch" and device != "cpu":
            raise ConfigError("int8 decoding runs on the CPU only (use --device cpu)")
        run = load_run(run_dir, checkpoint, device)
        if ensemble:
            run.model = Ensemble([run.model] + [member.model
                                                 for member in _members(run, ensemble, device)])
        engine = _engine(backend, int8)
        if backend == "onnx":  # a model folder's graphs
            model = _onnx_model(run, device, ensemble, int8)
        elif engine == Engine("onnxruntime", "int8"):  # the model's int8 graphs, made in memory
            from nmt.onnx_model import OnnxModel
            model = OnnxModel.of(run.model, torch.get_num_threads(), int8=True)
        else:
            model = quantize_int8(run.model) if engine.precision == "int8" else run.model
        run.model = model
        if engine != Engine("pytorch", "float32"):  # the default goes unsaid
            log.info("decoding with %s", engine)
        return cls(run, device, engine)

    @classmethod
    def from_pretrained(cls, name: str | Path, device: str = "cpu", int8: bool = False
                        ) -> "Translator":
        """A model folder: a path, or a Hugging Face Hub repo id (``pip install 'nmt[hub]'``)."""
        return cls.load(export.fetch(name), device=device, int8=int8)

    def save_pretrained(self, out: str | Path, license_id: str = "other", onnx: bool = False
                        ) -> Path:
        """Write this model as a model folder ``out`` (``from_pretrained`` loads it);
        ``onnx``: with ONNX graphs too (``backend="onnx"``)."""
        return export.save_folder(self._exportable(), out, export.card_of(self.run, license_id),
                                  onnx)

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None,
                    license_id: str = "other") -> str:
        """Upload this model as a model folder to the Hub repo ``repo_id``."""
        return export.push(self._exportable(), repo_id, export.card_of(self.run, license_id),
                           private, token)

    def _exportable(self) -> LoadedRun:
        if isinstance(self.model, Ensemble):
            raise ConfigError("an ensemble is several models: export each member's run on its own")
        if self.int8:
            raise ConfigError("an int8 model is quantized for decoding only: "
                              "export it without int8")
        return self.run

    def settings(self, **options) -> DecodeConfig:
        """The run's decoding settings with the given decode options replaced, checked
        (``nmt.config.decode_settings``)."""
        return decode_settings(self.decode, options, len(self.tgt_vocab))

    def hypotheses(self, sentences: list[str], keep_attention: bool = False,
                   constraints: Sequence | None = None, prefix: Sequence | None = None,
                   **options) -> list[list[Hypothesis]]:
        """Each sentence's n-best hypotheses (empty lines: []). ``options``: decode options, here
        and below; ``constraints``: per sentence, phrases its translation holds (beam search);
        ``prefix``: per sentence, the text it starts with (None or "": none)."""
        job = self.prepared(sentences, constraints, prefix, **options)
        found = decode_corpus(self.model, job.ids, job.decode, self.device,
                              keep_attention or job.keep_markup, job.never, job.prefixes,
                              job.phrases)
        results: list[list[Hypothesis]] = [[] for _ in job.sentences]
        for i, hyps in zip(job.todo, found):
            results[i] = hyps
        return results

    def prepared(self, sentences: list[str], constraints: Sequence | None = None,
                 prefix: Sequence | None = None, **options) -> Prepared:
        """The sentences, options, prefixes and constraints checked and encoded, before any
        decoding (TypeError or ConfigError naming what is wrong)."""
        sentences = checked_sentences(sentences)
        decode = self.settings(**options)
        prefix = _per_sentence("prefix", prefix, len(sentences))
        constraints = _per_sentence("constraints", constraints, len(sentences))
        if constraints and (decode.samples or decode.beam_size < 2):
            raise ConfigError("constraints: met by beam search only: "
                              "use beam_size >= 2 and no samples")
        keep = decode.markup == "keep"
        plain = [markup.strip(s)[0] for s in sentences] if keep else sentences
        written = [i for i, s in enumerate(plain) if s.strip()]
        # Text that encodes to no piece at all (U+200B alone, say) is blank too.
        todo = []
        ids = []
        tags = self.source_tags(decode)
        for i, pieces in zip(written, self.src_vocab.encode([plain[i] for i in written])):
            if pieces:
                todo.append(i)
                ids.append(tags + pieces)
        # Every sentence's are checked, a blank one's too (its translation stays blank).
        prefixes = [self._target(f"prefix[{i}]", p or "", decode, True)
                    for i, p in enumerate(prefix or [])]
        phrases = [_needed([self._target(f"constraints[{i}][{j}]", phrase, decode, False)
                            for j, phrase in enumerate(c)])
                   for i, c in enumerate(constraints or [])]
        most = max_output_lengths(torch.tensor([len(x) + 1 for x in ids]), decode.max_length_ratio,
                                  decode.max_length)
        for n, i in enumerate(todo):
            forced = ((len(prefixes[i]) if prefix else 0)
                      + (sum(map(len, phrases[i])) if constraints else 0))
            if forced > most[n]:
                raise ConfigError(f"sentence {i}: its prefix and constraints take {forced} target "
                                  f"pieces, more than its output may hold ({most[n]}: "
                                  "decode.max_length_ratio, decode.max_length)")
        prefixes = [prefixes[i] for i in todo] if prefix else None
        phrases = [phrases[i] for i in todo] if constraints else None
        never = self.tgt_vocab.control_ids + (self.tgt_vocab.markup_ids if keep else ())
        return Prepared(sentences, decode, todo, ids, prefixes, phrases, never, keep)

    def source_tags(self, decode: DecodeConfig) -> list[int]:
        """The tag pieces before every source sentence (``decode.target_lang``'s)."""
        data = self.run.cfg.data
        direction = for_target(data, decode.target_lang)
        return self.src_vocab.tag_ids(source_tags(data, direction, training=False))

    def _target(self, where: str, text, decode: DecodeConfig, empty_allowed: bool) -> list[int]:
        """A prefix or constraint phrase as target pieces; ConfigError naming ``where``."""
        if not isinstance(text, str):
            raise TypeError(f"{where}: expected str, got {type(text).__name__}")
        if one_line(text) != text:
            raise ConfigError(f"{where}: holds a control character or line break")
        if decode.markup == "keep" and any(c in text for c in "<>{}"):
            raise ConfigError(f"{where}: holds < > {{ or }}, "
                              "which markup: keep reserves for markup")
        pieces = self.tgt_vocab.encode([text])[0] if text.strip() else []
        if not pieces and not empty_allowed:
            raise ConfigError(f"{where}: {text!r} is an empty phrase (no target piece)")
        n = decode.no_repeat_ngram_size
        grams = [tuple(pieces[k:k + n]) for k in range(len(pieces) - n + 1)] if n else []
        if len(set(grams)) < len(grams):
            raise ConfigError(f"{where}: {text!r} repeats {n} pieces in a row, which "
                              f"decode.no_repeat_ngram_size {n} forbids")
        return pieces

    def texts(self, sentences: list[str], found: list[list[Hypothesis]], **options
              ) -> list[list[str]]:
        """The text of each sentence's hypotheses, the one place hypotheses become text (with
        ``markup="keep"`` its markup put back, ``nmt.markup``)."""
        decode = self.settings(**options)
        if decode.markup != "keep":
            return [self.tgt_vocab.decode([h.tokens for h in hyps]) if hyps else []
                    for hyps in found]
        tags = len(self.source_tags(decode))  # attention columns before the sentence's own
        out = []
        for sentence, hyps in zip(sentences, found):
            plain, items = markup.strip(sentence)
            if not hyps:  # nothing to translate: the markup alone
                out.append([sentence.strip()] if items else [])
                continue
            spans = self.src_vocab.spans(plain)
            out.append([markup.restore(items, spans, self.tgt_vocab.words(h.tokens),
                                       h.attention[:, tags:])
                        if items else self.tgt_vocab.decode([h.tokens])[0] for h in hyps])
        return out

    def translate(self, sentences: list[str] | str, constraints: Sequence | None = None,
                  prefix: Sequence | str | None = None, **options) -> list[str] | str:
        """One translation per sentence ("" for an empty one); a single string gives one."""
        if isinstance(sentences, str):
            return self.translate([sentences], _one(constraints), _one(prefix), **options)[0]
        found = self.hypotheses(sentences, False, constraints, prefix, n_best=1, **options)
        return [texts[0] if texts else "" for texts in self.texts(sentences, found, **options)]

    def translate_nbest(self, sentences: list[str] | str, n_best: int,
                        constraints: Sequence | None = None, prefix: Sequence | str | None = None,
                        **options) -> list[list[tuple[str, float]]] | list[tuple[str, float]]:
        """Each sentence's ``n_best`` (translation, score) pairs, best first."""
        if isinstance(sentences, str):
            return self.translate_nbest([sentences], n_best, _one(constraints), _one(prefix),
                                        **options)[0]
        found = self.hypotheses(sentences, False, constraints, prefix, n_best=n_best, **options)
        return [list(zip(texts, (h.score for h in hyps)))
                for texts, hyps in zip(self.texts(sentences, found, **options), found)]

    def sample(self, sentences: list[str] | str, samples: int = 1,
               prefix: Sequence | str | None = None, constraints: Sequence | None = None,
               **options) -> list[list[str]] | list[str]:
        """``samples`` random translations of each sentence (back-translation), the same for a
        seed in any batch."""
        if isinstance(sentences, str):
            return self.sample([sentences], samples, _one(prefix), _one(constraints), **options)[0]
        if isinstance(samples, numbers.Integral) and samples < 1:  # 0 would mean search
            raise ConfigError(f"samples: {samples!r}; "
                              "sample draws at least 1 translation per sentence")
        found = self.hypotheses(sentences, False, constraints, prefix, samples=samples,
                                **options)  # no constraints
        return [texts or [""] * samples
                for texts in self.texts(sentences, found, samples=samples, **options)]

    def generate(self, sentences: list[str] | str, num_beams: int | None = None,
                 num_return_sequences: int = 1, do_sample: bool = False,
                 temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None,
                 min_new_tokens: int | None = None, **options) -> list[str]:
        """Hugging Face ``generate``'s names: ``num_return_sequences`` (n) translations per
        sentence, flat (sentence i's at i*n .. i*n + n - 1); a setting left None takes the
        run's decode section (``generate``'s ``top_k`` would be 50)."""
        sentences = [sentences] if isinstance(sentences, str) else sentences
        n = num_return_sequences
        if isinstance(n, numbers.Integral) and n < 1:
            raise ConfigError(f"generate: num_return_sequences is {n!r}; it must be at least 1")
        if do_sample and num_beams not in (None, 1):
            raise ConfigError("generate: do_sample with num_beams > 1 (beam sampling) "
                              "is not supported")
        if do_sample:
            how = dict(samples=n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        else:
            how = dict(samples=0, n_best=n, beam_size=num_beams)
        found = self.hypotheses(sentences, min_length=min_new_tokens, **how, **options)
        return [text for texts in self.texts(sentences, found, **options)
                for text in (texts or [""] * n)]

    def alignment(self, sentence: str, hyp: Hypothesis, **options) -> dict:
        """Source and target pieces of a hypothesis kept with attention, and its weights
        [target, source]."""
        src_ids = (self.source_tags(self.settings(**options)) + self.src_vocab.encode([sentence])[0]
                   + [END])
        return {"sentence": sentence, "source": self.src_vocab.pieces(src_ids),
                "target": self.tgt_vocab.pieces(hyp.tokens + ([END] if hyp.ended else [])),
                "weights": hyp.attention[:, :len(src_ids)].tolist()}


def _engine(backend: str, int8: bool) -> Engine:
    """The one choice of engine. int8 without fast int8 products (VNNI) runs on onnxruntime
    (not batch-invariant bit for bit), or without the onnx extra is declined for float32."""
    if backend == "onnx":
        return Engine("onnxruntime", "int8" if int8 else "float32")
    if not int8 or fast_int8(torch.device("cpu")):
        return Engine("pytorch", "int8" if int8 else "float32")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("int8 decoding declined: this CPU has no fast int8 products (AVX512-VNNI, "
                    "AVX-VNNI or AMX), where PyTorch's int8 is slower than float32, and "
                    "onnxruntime's int8 needs pip install 'nmt[onnx]'; decoding in float32")
        return Engine("pytorch", "float32")
    return Engine("onnxruntime", "int8")


def _members(run: LoadedRun, ensemble: Sequence[str], device) -> list[LoadedRun]:
    """An ensemble's other members, with this run's vocabularies."""
    members = [load_run(*_member(name), device) for name in ensemble]
    for member in members:
        for side in ("src_vocab", "tgt_vocab"):
            if getattr(member, side).fingerprint != getattr(run, side).fingerprint:
                raise CheckpointError(f"{member.checkpoint}: its {side[:3]} vocabulary differs "
                                      f"from {run.checkpoint}'s; an ensemble needs one vocabulary")
    return members


def _onnx_model(run: LoadedRun, device, ensemble, int8: bool):
    from nmt.onnx_model import OnnxModel
    if ensemble or str(device) != "cpu":
        raise ConfigError("backend onnx: one model, on the CPU (drop --ensemble, --device)")
    if run.checkpoint.name != loading.WEIGHTS:
        raise ConfigError(f"backend onnx: {run.checkpoint} is a checkpoint; export a model folder "
                          "with 'nmt-export RUN OUT --onnx' and load that")
    return OnnxModel(run.checkpoint.parent, run.cfg.model.cell, torch.get_num_threads(), int8)


def _member(name: str) -> tuple[str, str]:
    """"RUN_DIR" or "RUN_DIR:CHECKPOINT" -> (run directory, checkpoint)."""
    if ":" in name and not Path(name).is_dir():
        run_dir, checkpoint = name.rsplit(":", 1)
        return run_dir, checkpoint
    return name, "best"


def _needed(phrases: list[list[int]]) -> list[list[int]]:
    """A sentence's phrases without repeats and without those inside another (met with it)."""
    unique = [list(p) for p in dict.fromkeys(map(tuple, phrases))]
    return [p for p in unique if not any(q != p and any(q[k:k + len(p)] == p for k in range(len(q)))
                                         for q in unique)]


def _one(value):
    """A single sentence's constraints or prefix as a one-sentence list (None: none)."""
    return None if value is None else [value]


def _per_sentence(name: str, values, count: int) -> list | None:
    """``constraints`` or ``prefix``: None, or one entry per sentence."""
    if values is None:
        return None
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{name}: expected a list with one entry per sentence, "
                        f"got {type(values).__name__}")
    if len(values) != count:
        raise ConfigError(f"{name}: {len(values)} entries for {count} sentences; "
                          "give one per sentence")
    if name == "constraints":
        for i, phrases in enumerate(values):
            if phrases is not None and not isinstance(phrases, (list, tuple)):
                raise TypeError(f"constraints[{i}]: expected a list of phrases, "
                                f"got {type(phrases).__name__}")
        values = [list(phrases or []) for phrases in values]
    return values if any(values) else None


def checked_sentences(sentences) -> list[str]:
    """A list of str, or TypeError / ValueError naming the first bad item."""
    if isinstance(sentences, (str, bytes)) or not isinstance(sentences, Iterable):
        raise TypeError(f"sentences: expected a list of str, got {type(sentences).__name__}")
    sentences = list(sentences)
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise TypeError(f"sentences[{i}]: expected str, got {type(sentence).__name__}")
        try:
            sentence.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 text has one
            raise ValueError(f"sentences[{i}]: not valid Unicode text (a lone surrogate)") from None
    return sentences
