"""CTC decoding for ``fairseq-generate``: greedy (Viterbi) and prefix beam search with an optional KenLM.

fairseq's ``SequenceGenerator`` drives encoder-decoder models step by step and cannot decode a CTC
model. :class:`CtcDecoder` has the interface ``fairseq-generate`` expects of a generator
(``generate(models, sample, **kwargs)`` returning, per utterance, a list of hypotheses with
``tokens``, ``score``, ``positional_scores`` and ``alignment``); the ``audio_ctc`` task builds it.

Greedy decoding takes the best label per frame, merges repeats and drops blanks. Beam search is the
standard CTC prefix beam search; with ``ctc_kenlm_model`` set, each completed word is scored by a
KenLM n-gram model (``pip install kenlm``), weighted by ``ctc_lm_weight`` plus ``ctc_word_score``.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass

LOG10_TO_LN = math.log(10.0)


@dataclass
class CtcDecoderConfig(FairseqDataclass):
    ctc_decoder: str = field(
        default="viterbi", metadata={"help": "viterbi (greedy) or beam (prefix beam search, width = --beam)"}
    )
    ctc_kenlm_model: Optional[str] = field(
        default=None, metadata={"help": "KenLM word n-gram model (.arpa or .bin) for beam search; needs `pip install kenlm`"}
    )
    ctc_lm_weight: float = field(default=1.0, metadata={"help": "weight of the language model score in beam search"})
    ctc_word_score: float = field(default=0.0, metadata={"help": "score added per emitted word in beam search"})
    ctc_word_separator: str = field(default="|", metadata={"help": "the letter dictionary's word separator symbol"})


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def greedy_decode(logp: Tensor, blank: int) -> Tuple[List[int], float, List[float]]:
    """``logp (T, V)`` log-probabilities -> (tokens, score, per-token scores)."""
    best, path = logp.max(dim=-1)
    tokens, scores, prev = [], [], None
    for t, k in enumerate(path.tolist()):
        if k != prev and k != blank:
            tokens.append(k)
            scores.append(float(best[t]))
        prev = k
    return tokens, float(best.sum()), scores


class KenLMScorer:
    """Word-level KenLM scoring of completed words, natural-log scale."""

    def __init__(self, path: str):
        try:
            import kenlm
        except ImportError:
            raise ImportError(
                "ctc_kenlm_model needs the KenLM Python module: `pip install kenlm` "
                "(or decode without a language model: drop --ctc-kenlm-model)"
            ) from None
        self.kenlm = kenlm
        self.model = kenlm.Model(path)

    def start(self):
        state = self.kenlm.State()
        self.model.BeginSentenceWrite(state)
        return state

    def score(self, state, word: str):
        out = self.kenlm.State()
        return self.model.BaseScore(state, word, out) * LOG10_TO_LN, out

    def finish(self, state) -> float:
        return self.model.BaseScore(state, "</s>", self.kenlm.State()) * LOG10_TO_LN


def beam_decode(logp: Tensor, blank: int, beam: int, sep: Optional[int], symbols: Sequence[str],
                lm: Optional[KenLMScorer] = None, lm_weight: float = 0.0, word_score: float = 0.0,
                nbest: int = 1) -> List[Tuple[List[int], float]]:
    """CTC prefix beam search over ``logp (T, V)``; returns up to ``nbest`` (tokens, score), best first.

    Each prefix keeps the log-probability of all alignments ending in blank (``pb``) and in its last
    label (``pnb``); with an LM, a word's score is added when the separator after it is emitted.
    """
    logp_np = logp.float().cpu().numpy()
    # prefix -> [pb, pnb, lm_total, lm_state, current_word]
    beams: Dict[Tuple[int, ...], list] = {(): [0.0, -math.inf, 0.0, lm.start() if lm else None, ""]}
    for t in range(logp_np.shape[0]):
        row = logp_np[t]
        candidates = np.argsort(row)[::-1][: max(beam, 2)]
        nxt: Dict[Tuple[int, ...], list] = {}

        def entry(prefix, parent):
            if prefix not in nxt:
                nxt[prefix] = [-math.inf, -math.inf, parent[2], parent[3], parent[4]]
            return nxt[prefix]

        for prefix, (pb, pnb, lm_total, lm_state, word) in beams.items():
            total = _logsumexp(pb, pnb)
            parent = [pb, pnb, lm_total, lm_state, word]
            for k in candidates:
                p = float(row[k])
                if k == blank:
                    e = entry(prefix, parent)
                    e[0] = _logsumexp(e[0], total + p)
                    continue
                last = prefix[-1] if prefix else None
                if k == last:  # repeat: stays the same prefix unless separated by a blank
                    e = entry(prefix, parent)
                    e[1] = _logsumexp(e[1], pnb + p)
                    new_p = pb + p
                else:
                    new_p = total + p
                new_prefix = prefix + (int(k),)
                is_new = new_prefix not in nxt
                e = entry(new_prefix, parent)
                if is_new:
                    if k == sep:
                        if word and lm is not None:
                            s, state = lm.score(lm_state, word)
                            e[2], e[3] = lm_total + lm_weight * s + word_score, state
                        elif word:
                            e[2] = lm_total + word_score
                        e[4] = ""
                    else:
                        e[4] = word + symbols[k]
                e[1] = _logsumexp(e[1], new_p)
        beams = dict(sorted(nxt.items(), key=lambda kv: _logsumexp(kv[1][0], kv[1][1]) + kv[1][2],
                            reverse=True)[:beam])

    finals = []
    for prefix, (pb, pnb, lm_total, lm_state, word) in beams.items():
        score = _logsumexp(pb, pnb) + lm_total
        if word:
            if lm is not None:
                s, lm_state = lm.score(lm_state, word)
                score += lm_weight * s
            score += word_score
        if lm is not None:
            score += lm_weight * lm.finish(lm_state)
        finals.append((list(prefix), score))
    finals.sort(key=lambda x: x[1], reverse=True)
    return finals[:nbest]


class CtcDecoder:
    """The generator ``fairseq-generate`` uses with the ``audio_ctc`` task."""

    def __init__(self, cfg: CtcDecoderConfig, tgt_dict: Dictionary, beam: int = 5, nbest: int = 1, task=None):
        if cfg.ctc_decoder not in ("viterbi", "beam"):
            raise ValueError(f"task.ctc_decoder={cfg.ctc_decoder!r}: expected 'viterbi' or 'beam'")
        if cfg.ctc_kenlm_model and cfg.ctc_decoder != "beam":
            raise ValueError("task.ctc_kenlm_model is used by beam search: add --ctc-decoder beam")
        self.cfg, self.tgt_dict, self.beam, self.nbest = cfg, tgt_dict, beam, nbest
        self.task = task  # only to name the manifest rows of a bad batch
        self.blank = tgt_dict.bos()  # fairseq's CTC blank is <s> (index 0), as in its ctc criterion
        self.sep = tgt_dict.index(cfg.ctc_word_separator) if cfg.ctc_word_separator in tgt_dict.indices else None
        self.lm = KenLMScorer(cfg.ctc_kenlm_model) if cfg.ctc_kenlm_model else None
        # generate.py strips these from printed strings
        self.symbols_to_strip_from_output = {tgt_dict.bos(), tgt_dict.eos(), tgt_dict.pad()}

    def refuse_non_finite(self, tensors: Dict, ids: Tensor, what: str) -> None:
        """Stop with the manifest rows of the samples whose ``tensors`` rows are not finite: without this
        fairseq-generate prints an empty hypothesis with score nan and goes on."""
        from d2v_plugin.core.criterion import nonfinite_rows, sample_source

        rows, _ = nonfinite_rows(tensors)
        if not rows:
            return
        datasets = getattr(self.task, "datasets", None) or {}
        dataset = next(iter(datasets.values())) if len(datasets) == 1 else None  # fairseq-generate loads one
        bad = [int(ids[r]) for r in rows]
        names = [sample_source(dataset, i) or f"sample id {i}" for i in bad[:5]]
        raise ValueError(f"{what}: {', '.join(names)}{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}")

    def description(self) -> str:
        """Which decoder runs, for the log (fairseq-generate's own score line only says ``beam=N``)."""
        if self.cfg.ctc_decoder == "viterbi":
            return "viterbi (greedy: best token per frame, repeats and blanks removed)"
        lm = f"KenLM {self.cfg.ctc_kenlm_model}" if self.lm is not None else "no language model"
        return f"prefix beam search (beam {self.beam}, {lm})"

    @torch.no_grad()
    def emissions(self, models, sample) -> Tuple[Tensor, Tensor]:
        """Mean log-probabilities of the ensemble ``(B, T, V)`` and frame counts ``(B,)``."""
        total, padding = None, None
        for model in models:
            net_output = model(**sample["net_input"])
            logp = model.get_normalized_probs(net_output, log_probs=True).transpose(0, 1)  # (B, T, V)
            total = logp if total is None else total + logp
            padding = net_output.get("padding_mask")
        logp = total / len(models)
        B, T, _ = logp.shape
        lengths = torch.full((B,), T, dtype=torch.long) if padding is None else (~padding).sum(-1).cpu()
        return logp.float().cpu(), lengths

    def generate(self, models, sample, **unused) -> List[List[Dict]]:
        ids = sample.get("id")  # fairseq's batches carry ids; a caller's own batch may not (its rows then)
        ids = torch.arange(sample["net_input"]["source"].size(0)) if ids is None else ids
        self.refuse_non_finite(sample["net_input"], ids, "audio holds NaN or infinite samples")
        logp, lengths = self.emissions(models, sample)
        # -inf is a valid log-probability (fairseq's CTC model gives padded frames -inf for all but blank); NaN
        # in a real frame is a broken model
        real = torch.arange(logp.size(1), device=logp.device)[None, :] < lengths[:, None]
        self.refuse_non_finite({"emissions": torch.where(real[..., None] & logp.isnan(), torch.nan, 0.0)},
                               ids, "the model's output is NaN (do the checkpoint's weights hold NaN/Inf?)")
        hypos = []
        for b in range(logp.size(0)):
            frames = logp[b, : lengths[b]]
            if self.cfg.ctc_decoder == "viterbi":
                tokens, score, pos = greedy_decode(frames, self.blank)
                results = [(tokens, score, pos)]
            else:
                results = [(toks, score, [score / max(len(toks), 1)] * len(toks))
                           for toks, score in beam_decode(frames, self.blank, self.beam, self.sep,
                                                          self.tgt_dict.symbols, self.lm,
                                                          self.cfg.ctc_lm_weight, self.cfg.ctc_word_score,
                                                          self.nbest)]
            hypos.append([
                {"tokens": torch.tensor(t, dtype=torch.long), "score": s,
                 "positional_scores": torch.tensor(p, dtype=torch.float), "alignment": None}
                for t, s, p in results
            ])
        return hypos
