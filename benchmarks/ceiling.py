"""The eager-PyTorch ceiling: the benchmarks' reference model in plain PyTorch, timed.

The model (independent of the ``nmt`` package, so that nothing of nmt's is
in the measured path): source and target embeddings 256 (not shared, not
tied); encoder nn.LSTM, 2 layers, bidirectional, 256 per direction, packed;
a bridge tanh(W [h_fwd; h_bwd]) from each encoder layer's final state to the
matching decoder layer; decoder 2 x nn.LSTMCell 512 stepped in Python; Luong
"general" attention (score = h . W k) with input feeding (the attentional
vector tanh(W [context; h]) goes into the next step's first layer); dropout
0.3 on the inputs of every layer and on the attentional vector; output layer
to 8,000 pieces at the real target positions only; summed cross-entropy per
target token; Adam lr 1e-3 (fused kernel), gradient-norm clipping 1.0; fp32.
16,868,160 parameters, as nmt's reference model. TF32 is off (cuBLAS and
cuDNN) unless --tf32.

Modes:
  train   batches of --batch-sentences N sentences or of about --batch-tokens T
          tokens (padded, the longer side, end marker included: nmt's rule),
          cut from length-sorted Multi30k en->de training pairs, --steps
          batches drawn at random. Target pieces/s, counted without end
          markers or padding, as nmt's train_speed.py counts them.
  greedy  one batch of the first --batch-sentences (1,000) test2016 sources,
          decoded for exactly --steps (20) steps (argmax; no stopping), the
          output brought to the host. Sentences/s.
Sentence lengths: with --spm MODEL (nmt's sentencepiece model, as the GPU
suite passes it) the real piece counts of the corpus; otherwise word counts
x 1.20 (English) and x 1.33 (German), which give the means of the reference
setting's joint BPE 8,000 on Multi30k train (14.3 English, 14.8 German pieces
per sentence; the spread differs a little). Piece ids are random: only
lengths affect speed. Batches are built on the device before
timing (data loading is not part of the ceiling).

Timing: one untimed pass over exactly the batches (shapes) that are then
timed, then --repeats timed passes (torch.cuda.synchronize() before and
after each on a GPU); the median pass gives the rate. Prints one JSON object
(with benchmarks/machine.py's description), then a one-line summary.

    python benchmarks/ceiling.py --device cuda --mode train --batch-sentences 64 [--tf32]
    python benchmarks/ceiling.py --device cuda --mode train --batch-tokens 16384
    python benchmarks/ceiling.py --device cuda --mode greedy --batch-sentences 1000 --steps 20
    python benchmarks/ceiling.py --summarize OUT_DIR   # gpu_suite.sh's table from its JSON files
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe, summary  # noqa: E402

DATA = HERE.parent / "data" / "multi30k"
SRC, TGT = "en", "de"
PIECES_PER_WORD = {"en": 1.20, "de": 1.33}
PAD, END, VOCAB = 0, 2, 8000


class Reference(nn.Module):
    def __init__(self, emb=256, enc=256, dec=512, layers=2, dropout=0.3):
        super().__init__()
        self.src_embed = nn.Embedding(VOCAB, emb, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(VOCAB, emb, padding_idx=PAD)
        self.encoder = nn.LSTM(emb, enc, layers, batch_first=True, dropout=dropout, bidirectional=True)
        self.bridge_h, self.bridge_c = nn.Linear(2 * enc, dec), nn.Linear(2 * enc, dec)
        self.cells = nn.ModuleList([nn.LSTMCell(emb + dec, dec)] +
                                   [nn.LSTMCell(dec, dec) for _ in range(layers - 1)])
        self.key = nn.Linear(2 * enc, dec, bias=False)  # Luong general: score = h . (W k)
        self.combine = nn.Linear(2 * enc + dec, dec, bias=False)
        self.out = nn.Linear(dec, VOCAB)
        self.drop = nn.Dropout(dropout)

    def encode(self, src, lengths):
        packed = pack_padded_sequence(self.drop(self.src_embed(src)), lengths, batch_first=True,
                                      enforce_sorted=False)
        out, (h, c) = self.encoder(packed)
        memory = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))[0]
        layers = len(self.cells)
        # [layers * 2, B, enc] -> per layer [B, 2 * enc], forward then backward
        h, c = (x.view(layers, 2, x.size(1), -1).transpose(1, 2).flatten(2) for x in (h, c))
        hs = [torch.tanh(self.bridge_h(h[k])) for k in range(layers)]
        cs = [torch.tanh(self.bridge_c(c[k])) for k in range(layers)]
        feed = memory.new_zeros(src.size(0), self.out.in_features)
        return (memory, self.key(memory), src == PAD), hs, cs, feed

    def step(self, emb, memory, hs, cs, feed):
        values, keys, padding = memory
        x, new_h, new_c = torch.cat([emb, feed], dim=1), [], []
        for k, cell in enumerate(self.cells):
            h, c = cell(self.drop(x), (hs[k], cs[k]))
            new_h.append(h)
            new_c.append(c)
            x = h
        scores = torch.bmm(keys, x.unsqueeze(2)).squeeze(2).masked_fill(padding, float("-inf"))
        context = torch.bmm(torch.softmax(scores, dim=1).unsqueeze(1), values).squeeze(1)
        return torch.tanh(self.combine(torch.cat([context, x], dim=1))), new_h, new_c

    def forward(self, src, lengths, tgt_in, positions):
        """Teacher-forced logits at the real target positions (indices into tgt_in.view(-1))."""
        memory, hs, cs, feed = self.encode(src, lengths)
        emb, vectors = self.tgt_embed(tgt_in), []
        for t in range(tgt_in.size(1)):
            feed, hs, cs = self.step(emb[:, t], memory, hs, cs, feed)
            vectors.append(feed)
        vectors = self.drop(torch.stack(vectors, dim=1)).flatten(0, 1)
        return self.out(vectors.index_select(0, positions))

    @torch.no_grad()
    def greedy(self, src, lengths, steps):
        memory, hs, cs, feed = self.encode(src, lengths)
        prev, found = src.new_full((src.size(0),), END), []
        for _ in range(steps):
            feed, hs, cs = self.step(self.tgt_embed(prev), memory, hs, cs, feed)
            prev = self.out(feed).argmax(dim=1)
            found.append(prev)
        return torch.stack(found, dim=1).cpu()


def piece_lengths(prefix: Path, lang: str, spm: str | None) -> np.ndarray:
    lines = prefix.with_name(f"{prefix.name}.{lang}").read_text(encoding="utf-8").splitlines()
    if spm:
        import sentencepiece
        return np.array([len(p) for p in sentencepiece.SentencePieceProcessor(model_file=spm).encode(lines)])
    return np.maximum(1, np.rint(np.array([len(s.split()) for s in lines]) * PIECES_PER_WORD[lang])).astype(int)


def cut_batches(src_lens, tgt_lens, sentences, tokens, rng) -> list[np.ndarray]:
    """Length-sorted batches of ``sentences`` sentences, or of at most ``tokens`` padded tokens."""
    order = np.lexsort((rng.random(len(src_lens)), tgt_lens, src_lens))
    batches, start, longest = [], 0, 0
    for pos, i in enumerate(order):
        longest = max(longest, src_lens[i] + 1, tgt_lens[i] + 1)
        n = pos - start + 1
        if (n * longest > tokens if tokens else n > sentences) and n > 1:
            batches.append(order[start:pos])
            start, longest = pos, max(src_lens[i], tgt_lens[i]) + 1
    return batches + [order[start:]]


def padded(lengths, rng) -> torch.Tensor:
    """Random piece ids of the given lengths, each followed by END, padded with PAD."""
    out = torch.full((len(lengths), max(lengths) + 1), PAD, dtype=torch.long)
    for row, n in enumerate(lengths):
        out[row, :n] = torch.from_numpy(rng.integers(3, VOCAB, n))
        out[row, n] = END
    return out


def train_batch(src_lens, tgt_lens, rng, device) -> dict:
    """A batch as nmt builds it: source + END; decoder input END + target; output target + END."""
    src, tgt_out = padded(src_lens, rng), padded(tgt_lens, rng)
    tgt_in = torch.cat([torch.full((len(tgt_lens), 1), END), tgt_out[:, :-1]], dim=1)
    tgt_in = tgt_in.masked_fill(tgt_out == PAD, PAD)
    real = (tgt_out != PAD).view(-1)
    return {"src": src.to(device), "lengths": torch.tensor(src_lens + 1),
            "tgt_in": tgt_in.to(device), "positions": real.nonzero().squeeze(1).to(device),
            "targets": tgt_out.view(-1)[real].to(device),
            "pieces": int(tgt_lens.sum()), "tokens": int(tgt_lens.sum() + len(tgt_lens))}


def training_pass(run, model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[dict]) -> None:
    """One training step per batch: ``run`` (the model, or a compiled form of it) forward,
    summed cross-entropy per target token, backward, clipping at 1.0, Adam."""
    for b in batches:
        logits = run(b["src"], b["lengths"], b["tgt_in"], b["positions"])
        loss = F.cross_entropy(logits, b["targets"], reduction="sum") / b["tokens"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def timed(work, repeats: int, device: torch.device) -> list[float]:
    """Seconds of each of ``repeats`` runs of ``work``, after one untimed run of the same work."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    work()
    seconds = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        work()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    model = Reference().to(device)
    result = {"benchmark": "ceiling", "mode": args.mode, "tf32": args.tf32,
              "lengths": f"sentencepiece {args.spm}" if args.spm else "word counts x 1.20 (en), x 1.33 (de)"}
    if args.mode == "train":
        src_lens, tgt_lens = (piece_lengths(DATA / "train", lang, args.spm) for lang in (SRC, TGT))
        longer = np.maximum(src_lens, tgt_lens)
        keep = (longer <= 100) & (longer <= 3 * np.minimum(src_lens, tgt_lens))
        src_lens, tgt_lens = src_lens[keep], tgt_lens[keep]  # nmt's length filter (data.max_len, max_len_ratio)
        batches = cut_batches(src_lens, tgt_lens, args.batch_sentences, args.batch_tokens, rng)
        picked = rng.choice(len(batches), size=min(args.steps, len(batches)), replace=False)
        batches = [train_batch(src_lens[batches[j]], tgt_lens[batches[j]], rng, device) for j in picked]
        version = tuple(int(v) for v in torch.__version__.split(".")[:2])
        fused = {"fused": True} if device.type == "cuda" or version >= (2, 4) else {}  # fused CPU Adam: 2.4
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **fused)
        model.train()

        seconds = timed(lambda: training_pass(model, model, optimizer, batches), args.repeats, device)
        pieces = sum(b["pieces"] for b in batches)
        sentences = sum(len(b["lengths"]) for b in batches)
        median = statistics.median(seconds)
        result.update({
            "batch": f"{args.batch_tokens} tokens" if args.batch_tokens else f"{args.batch_sentences} sentences",
            "steps_per_pass": len(batches), "sentences_per_batch": round(sentences / len(batches), 1),
            "tgt_pieces_per_batch": round(pieces / len(batches), 1),
            "seconds_per_step": round(median / len(batches), 4),
            "tgt_pieces_per_s": round(pieces / median, 1),
            "tgt_pieces_per_s_all": [round(pieces / s, 1) for s in seconds]})
        line = f"{result['tgt_pieces_per_s']} target pieces/s, {result['seconds_per_step']} s/step ({result['batch']})"
    else:
        src_lens = piece_lengths(DATA / "test2016", SRC, args.spm)
        src_lens = np.resize(src_lens, args.batch_sentences)  # the first N sentences (repeated if N > 1,000)
        src = padded(src_lens, rng).to(device)
        lengths = torch.tensor(src_lens + 1)
        model.eval()
        seconds = timed(lambda: model.greedy(src, lengths, args.steps), args.repeats, device)
        median = statistics.median(seconds)
        result.update({"batch_sentences": args.batch_sentences, "decoder_steps": args.steps,
                       "seconds": round(median, 4), "sent_per_s": round(args.batch_sentences / median, 1),
                       "sent_per_s_all": [round(args.batch_sentences / s, 1) for s in seconds]})
        line = f"{result['sent_per_s']} sentences/s (greedy, batch {args.batch_sentences}, {args.steps} steps)"
    result["repeats"] = args.repeats
    result["parameters"] = sum(p.numel() for p in model.parameters())
    if device.type == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    result["machine"] = describe(device)
    print(json.dumps(result, indent=2))
    print(f"ceiling: {line}, TF32 {'on' if args.tf32 else 'off'} ({summary(result['machine'])})")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=("train", "greedy"), default="train")
    parser.add_argument("--batch-sentences", type=int, help="default: 64 (train), 1000 (greedy)")
    parser.add_argument("--batch-tokens", type=int, help="train: batches of about this many tokens")
    parser.add_argument("--steps", type=int, default=20, help="train: batches per pass; greedy: decoder steps")
    parser.add_argument("--repeats", type=int, help="timed passes (default: 5 train, 20 greedy)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in cuBLAS and cuDNN (default: off)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spm", help="sentencepiece model for the real piece lengths")
    parser.add_argument("--summarize", metavar="OUT_DIR", help="print gpu_suite.sh's table and exit")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(Path(args.summarize)))
        return
    args.batch_sentences = args.batch_sentences or (1000 if args.mode == "greedy" else 64)
    args.repeats = args.repeats or (20 if args.mode == "greedy" else 5)
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32  # matrix products (cuBLAS)
    torch.backends.cudnn.allow_tf32 = args.tf32  # the encoder's cuDNN LSTM
    measure(args)


# gpu_suite.sh's table: (measure, nmt file, nmt field, beam, ceiling file stem, target, nmt before);
# a decoding row's beam may be (beam, mode): decode_speed.py's result of that mode (default fp32).
# The ceiling compared with is the one with nmt's TF32 setting: STEM.json (off) or STEM_tf32.json (on).
ROWS = [
    ("training, 64 sentences per batch, target pieces/s", "train_b64", "tgt_pieces_per_s", None,
     "ceiling_train_b64", 30_000, 16_640),
    ("... the same, train.tf32=false", "train_b64_notf32", "tgt_pieces_per_s", None, "ceiling_train_b64", None, None),
    ("... the same, bf16 autocast", "train_b64_bf16", "tgt_pieces_per_s", None, None, None, None),
    ("training, ~16k-token batches, target pieces/s", "train_16k", "tgt_pieces_per_s", None,
     "ceiling_train_16k", 300_000, 89_600),
    ("... the same, train.tf32=false", "train_16k_notf32", "tgt_pieces_per_s", None, "ceiling_train_16k", None, None),
    ("... the same, bf16 autocast", "train_16k_bf16", "tgt_pieces_per_s", None, None, None, None),
    ("... the same, the gnmt decoder (model.decoder gnmt, no input feeding)", "train_16k_gnmt",
     "tgt_pieces_per_s", None, "ceiling_train_16k", 1_000_000, None),
    ("greedy decoding of test2016, batch 1,000, sentences/s (decoding only)", "decode_b1000", "sent_per_s", 1,
     "ceiling_greedy_b1000", 50_000, 16_600),
    ("beam 5, the same, sentences/s", "decode_b1000", "sent_per_s", 5, None, 8_000, 605),
    ("greedy, the same, decode.cuda_graphs", "decode_b1000", "sent_per_s", (1, "graphs"),
     "ceiling_greedy_b1000", 50_000, None),
    ("beam 5, the same, decode.cuda_graphs", "decode_b1000", "sent_per_s", (5, "graphs"), None, 8_000, None),
]


def read_json(path: Path) -> dict | None:
    """The JSON object at the start of ``path`` (a summary line may follow it), or None."""
    try:
        return json.JSONDecoder().raw_decode(path.read_text(encoding="utf-8").lstrip())[0]
    except (OSError, ValueError):
        return None


def summarize(out: Path) -> str:
    """A markdown table, one row per measure: nmt, the eager ceiling, their ratio, the target."""
    def missing(name: str) -> str:
        return "failed" if (out / f"{name}.log").exists() else "not run"

    def tf32_of(result: dict | None, default: bool) -> bool | None:
        """nmt's TF32 setting as its JSON recorded it (None: it ran on a CPU)."""
        machine = (result or {}).get("machine")
        if isinstance(machine, dict) and not machine.get("gpu"):
            return None
        recorded = machine.get("tf32_matmul") if isinstance(machine, dict) else None
        return default if recorded is None else bool(recorded)

    def steady_rate(name: str, result: dict) -> str:
        """Target pieces/s from nmt's log windows after the first (the warm-up), if any."""
        try:
            text = (out / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        windows = [(int(m[1]), float(m[2])) for m in
                   re.finditer(r"step (\d+) epoch \d+: .* (\d+(?:\.\d+)?) target tokens/s", text)]
        rates = [rate for step, rate in windows[1:]]
        pieces, sentences = result.get("tgt_pieces_per_s"), result.get("sentences_per_s")
        if not rates or not pieces or not sentences:
            return ""
        steady = statistics.median(rates) * pieces / (pieces + sentences)  # tokens include end markers
        return f"after warm-up {steady:,.0f} pieces/s (median log window after step {windows[0][0]})"

    lines = ["| measure | nmt before | nmt | eager ceiling | nmt / ceiling | target | met | notes |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    machines = []
    for measure, name, field, beam, stem, target, before in ROWS:
        result = read_json(out / f"{name}.json")
        value, notes = None, []
        if result and beam is None:
            value = result.get(field)
            notes.append(f"{result.get('seconds_per_step')} s/step, {result.get('steps')} steps"
                         + (f", {result['peak_gpu_mib']:,} MiB GPU" if "peak_gpu_mib" in result else ""))
            notes.append(steady_rate(name, result))
        elif result:
            beam_size, mode = beam if isinstance(beam, tuple) else (beam, "fp32")
            found = [r for r in result.get("results", []) if r.get("beam") == beam_size and r.get("mode") == mode]
            if found:
                value = found[0].get(field)
                notes.append(f"BLEU {found[0].get('bleu')} (model step {result.get('step')}), "
                             f"text to text {found[0].get('end_to_end_sent_per_s')}/s")
                if "same_as_fp32" in found[0]:
                    same = found[0]["same_as_fp32"]
                    notes.append("output = eager fp32's" if same else "OUTPUT DIFFERS from eager fp32's")
        if result and isinstance(result.get("machine"), dict):
            machines.append(result["machine"])
        nmt_cell = f"{value:,.0f}" if value is not None else missing(name)
        ceiling_cell, ratio = "", ""
        if stem:
            tf32 = tf32_of(result, default=not name.endswith("notf32"))
            notes.append("CPU" if tf32 is None else f"TF32 {'on' if tf32 else 'off'} in both")
            cname = f"{stem}_tf32" if tf32 else stem
            ceiling = read_json(out / f"{cname}.json")
            cvalue = ceiling.get(field) if ceiling else None
            ceiling_cell = f"{cvalue:,.0f}" if cvalue is not None else missing(cname)
            if value is not None and cvalue:
                ratio = f"{value / cvalue:.2f}"
            if ceiling and isinstance(ceiling.get("machine"), dict):
                machines.append(ceiling["machine"])
        met = "" if target is None or value is None else ("yes" if value >= target else "no")
        lines.append(f"| {measure} | {f'{before:,}' if before else ''} | {nmt_cell} | {ceiling_cell} | {ratio} | "
                     f"{f'>= {target:,}' if target else ''} | {met} | {'; '.join(n for n in notes if n)} |")
    head = f"Machine: {summary(machines[0])}." if machines else "Machine: (no results)."
    if machines and len({summary(m).split(', TF32')[0] for m in machines}) > 1:
        head += " WARNING: the results come from different machines or torch versions."
    return head + "\n\n" + "\n".join(lines)


if __name__ == "__main__":
    main()
