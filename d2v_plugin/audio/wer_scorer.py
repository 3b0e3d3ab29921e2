"""``--scoring wer_ler`` for fairseq-generate: word and letter error rates in one line.

fairseq's ``wer`` scorer gives one rate per run (words, or characters with ``--wer-char-level``);
speech users want both. The line reads ``WER: 12.34 (45/365 words) | LER: 3.21 (52/1620 letters)``.
Letter errors are counted over the characters of the normalised strings, spaces included.
"""

from dataclasses import dataclass

import editdistance

from fairseq.dataclass import FairseqDataclass
from fairseq.scoring import BaseScorer, register_scorer


@dataclass
class WerLerScorerConfig(FairseqDataclass):
    pass


@register_scorer("wer_ler", dataclass=WerLerScorerConfig)
class WerLerScorer(BaseScorer):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.word_errors = self.words = self.letter_errors = self.letters = self.utterances = 0

    def add_string(self, ref: str, pred: str) -> None:
        ref_words, pred_words = ref.split(), pred.split()
        self.word_errors += editdistance.eval(ref_words, pred_words)
        self.words += len(ref_words)
        ref_chars, pred_chars = " ".join(ref_words), " ".join(pred_words)
        self.letter_errors += editdistance.eval(ref_chars, pred_chars)
        self.letters += len(ref_chars)
        self.utterances += 1

    def score(self) -> float:
        return 100.0 * self.word_errors / max(self.words, 1)

    def letter_error_rate(self) -> float:
        return 100.0 * self.letter_errors / max(self.letters, 1)

    def result_string(self) -> str:
        return (f"WER: {self.score():.2f} ({self.word_errors}/{self.words} words) | "
                f"LER: {self.letter_error_rate():.2f} ({self.letter_errors}/{self.letters} letters) | "
                f"{self.utterances} utterances")
