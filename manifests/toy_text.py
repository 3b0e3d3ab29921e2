"""Generate a toy English corpus with a learnable structure, and a sentence classification task on it.

Pre-training text (``pretrain.txt``): documents of 3-6 templated sentences about one noun, which is an
animal or a tool. The adjectives, verbs and abilities around a noun depend on its kind ("the sleepy
fox hides behind the barn .", "a rusty chisel can cut ."), so a model that predicts masked words
(or their representations) learns which words go together.

Classification (``cls_{train,valid}.{txt,labels}``): such sentences labelled ``animal`` or ``tool``.
With ``--holdout`` the valid sentences use only nouns, adjectives and verbs that no train sentence
uses (a third of each kind's words), so only what pre-training learned about those words helps
(the benchmark's setting); without it both splits draw from all words.

    python -m manifests.toy_text toy_text --docs 3000 --cls-train 200 --cls-valid 400 --holdout
"""

import argparse
import random
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

WORDS = {
    "animal": {
        "noun": ["cat", "dog", "horse", "rabbit", "mouse", "goat", "sheep", "duck", "fox", "owl", "wolf", "bear"],
        "adjective": ["hungry", "sleepy", "furry", "young", "wild", "tiny"],
        "verb": ["sleeps", "runs", "eats", "hides", "jumps", "plays"],
        "ability": ["swim", "climb", "bite"],
    },
    "tool": {
        "noun": ["hammer", "knife", "saw", "drill", "wrench", "shovel", "axe", "rake", "chisel", "ladder",
                 "pliers", "spade"],
        "adjective": ["rusty", "sharp", "heavy", "new", "broken", "shiny"],
        "verb": ["lies", "hangs", "rests", "stays", "waits", "leans"],
        "ability": ["cut", "dig", "grip"],
    },
}
PLACES = ["barn", "shed", "garden", "house", "field", "yard"]
PREPOSITIONS = ["in", "near", "behind", "under"]
Vocab = Dict[str, Dict[str, List[str]]]


def sentence(words: Dict[str, List[str]], noun: str, rng: random.Random) -> str:
    if rng.random() < 0.7:
        return (f"the {rng.choice(words['adjective'])} {noun} {rng.choice(words['verb'])} "
                f"{rng.choice(PREPOSITIONS)} the {rng.choice(PLACES)} .")
    return f"a {noun} can {rng.choice(words['ability'])} ."


def split_vocab(holdout: bool) -> Tuple[Vocab, Vocab]:
    """(train words, valid words): with ``holdout`` the last third of each list goes to valid only."""
    if not holdout:
        return WORDS, WORDS
    cut = {kind: {k: len(v) - len(v) // 3 for k, v in words.items()} for kind, words in WORDS.items()}
    train = {kind: {k: v[:cut[kind][k]] for k, v in words.items()} for kind, words in WORDS.items()}
    valid = {kind: {k: v[cut[kind][k]:] for k, v in words.items()} for kind, words in WORDS.items()}
    return train, valid


def examples(n: int, vocab: Vocab, rng: random.Random) -> List[Tuple[str, str]]:
    out = []
    for _ in range(n):
        kind = rng.choice(sorted(vocab))
        out.append((sentence(vocab[kind], rng.choice(vocab[kind]["noun"]), rng), kind))
    return out


def write_examples(path: Path, items: Sequence[Tuple[str, str]]) -> None:
    path.with_suffix(".txt").write_text("".join(f"{t}\n" for t, _ in items))
    path.with_suffix(".labels").write_text("".join(f"{l}\n" for _, l in items))


def generate(out: Path, docs: int, cls_train: int, cls_valid: int, holdout: bool, seed: int) -> None:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    text = []
    for _ in range(docs):
        kind = rng.choice(sorted(WORDS))
        noun = rng.choice(WORDS[kind]["noun"])
        text.append("\n".join(sentence(WORDS[kind], noun, rng) for _ in range(rng.randint(3, 6))))
    (out / "pretrain.txt").write_text("\n\n".join(text) + "\n")
    train_vocab, valid_vocab = split_vocab(holdout)
    write_examples(out / "cls_train", examples(cls_train, train_vocab, rng))
    write_examples(out / "cls_valid", examples(cls_valid, valid_vocab, rng))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write pretrain.txt and cls_{train,valid}.{txt,labels} to")
    p.add_argument("--docs", type=int, default=2000, help="pre-training documents")
    p.add_argument("--cls-train", type=int, default=200, help="classification train sentences")
    p.add_argument("--cls-valid", type=int, default=200, help="classification valid sentences")
    p.add_argument("--holdout", action="store_true",
                   help="valid sentences use only words (a third per kind) that train sentences never use")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    args = p.parse_args(argv)
    generate(args.out, args.docs, args.cls_train, args.cls_valid, args.holdout, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
