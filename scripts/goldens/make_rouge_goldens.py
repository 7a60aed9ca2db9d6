#!/usr/bin/env python3
"""Writes the ROUGE-L and Porter-stemmer goldens that sparq-tasks' tests compare against.

Reference implementation: Google's rouge_score 0.1.2 with use_stemmer=True (which
stems with NLTK's PorterStemmer in its default NLTK_EXTENSIONS mode). Run once,
commit the outputs; the Rust tests need no Python.

    pip install rouge_score==0.1.2
    python3 scripts/goldens/make_rouge_goldens.py [--data-dir ../shared/data]

Outputs (texts are cut to a few hundred characters to keep the files small):
    crates/sparq-tasks/tests/golden/rouge_l.jsonl       prediction, reference, precision, recall, fmeasure
    crates/sparq-tasks/tests/golden/porter_stems.tsv    word <TAB> NLTK stem
"""
import argparse
import json
import random
import re
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

from nltk.stem import porter
from rouge_score import rouge_scorer

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "crates/sparq-tasks/tests/golden"

# Hand-written pairs around the tokenizer's and the stemmer's corners: numbers,
# hyphens, apostrophes, non-ASCII letters, '-ies'/'-ied'/'-ing'/'-ly' endings, NLTK's
# irregular forms, empty and punctuation-only texts.
TRICKY = [
    ("He gave generously, running 3.5km on 12-04-2015.", "They generously ran 3,5 km in the 2015 run-off."),
    ("The U.S.-led coalition's 'shock-and-awe' campaign", "US led coalitions shocked and awed"),
    ("Ponies, ties and skies; flies dies lies.", "pony tie sky fly die lie"),
    ("cried, tried, died, spied; dying lying tying", "cry try die spy die lie tie"),
    ("It's Obama's and the Clintons' decision", "it s obama s decision"),
    ("Café naïve résumé Zoë Škoda", "cafe naive resume zoe skoda"),
    ("KELVIN \u212a and the letter \u0130stanbul", "kelvin k istanbul"),
    ("", "Nothing to compare against."),
    ("Something to compare.", ""),
    ("!!! ... ??? ---", "--- ... !!!"),
    ("news innings outings cannings proceed exceed succeed howe", "news inning outing canning proceeding exceeded succeeding"),
    ("relational conditional rationalize digitizer conformably", "relate condition rational digitize conformable"),
    ("hopefulness callousness formality sensitivity sensibility", "hopeful callous formal sensitive sensible"),
    ("triplicate formative formalize electricity electrical goodness", "triplic form formal electric electric good"),
    ("revival allowance inference airliner gyroscopic adjustable", "reviv allow infer airlin gyroscop adjust"),
    ("defensible irritant replacement adjustment dependent adoption", "defens irrit replac adjust depend adopt"),
    ("homologous communism activate angularity effective bowdlerize", "homolog commun activ angular effect bowdler"),
    ("probate rate cease controlling rolling", "probat rate ceas control roll"),
    ("analogousli vileli differentli radicalli hesitanci valenci", "analogous vile different radical hesitance valence"),
    ("archaeology apology geology theology", "archaeolog apolog geolog theolog"),
    ("syzygy yyyy toy enjoy happy sky by", "syzygi toy enjoy happi sky"),
    ("agreed feed bled plastered motoring sing", "agre feed bled plaster motor sing"),
    ("conflated troubled sized hopping tanned falling hissing fizzed failing filing", "conflat troubl size hop tan fall hiss fizz fail file"),
    ("1,000,000 people; 2nd place; 4x4 trucks; COVID-19", "1000000 people 2nd place 4x4 truck covid 19"),
    ("e-mail re-election co-operate mother-in-law", "email reelection cooperate mother in law"),
    ("don't won't can't shouldn't y'all", "do not will not cannot should not you all"),
    ("the the the the", "the"),
    ("a b c d e f g", "g f e d c b a"),
    ("Running runs ran runner", "run run ran runner"),
    ("generalizations generalization generalize general", "gener gener gener gener"),
]


def cut(text, rng, lo=100, hi=260):
    """Cuts text to a random length, often mid-word (which exercises the stemmer)."""
    n = rng.randint(lo, hi)
    return text[:n]


def first_sentences(article, k):
    # Crude sentence split: good enough to make realistic "lead-k" summaries.
    parts = re.split(r"(?<=[.!?])\s+", article.strip())
    return " ".join(parts[:k])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared/data"))
    args = ap.parse_args()
    assert version("rouge_score") == "0.1.2", version("rouge_score")

    rows = []
    with open(Path(args.data_dir) / "cnn_dailymail/test_first1000.jsonl", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))

    rng = random.Random(20240501)
    pairs = []
    # Highlights against the article's lead sentences (the usual baseline summary).
    for r in rows[:160]:
        k = rng.randint(1, 4)
        pairs.append((cut(first_sentences(r["article"], k), rng), cut(r["highlights"], rng)))
    # Highlights against other articles' highlights (low overlap).
    for i in range(160, 270):
        pairs.append((cut(rows[i]["highlights"], rng), cut(rows[i + 1]["highlights"], rng)))
    # A summary against a perturbed copy of itself (high overlap, shuffled words).
    for r in rows[300:340]:
        words = r["highlights"].split()[:45]
        j = rng.randrange(max(1, len(words)))
        words = words[:j] + words[j + 3:]
        if len(words) > 4:
            a, b = rng.randrange(len(words)), rng.randrange(len(words))
            words[a], words[b] = words[b], words[a]
        pairs.append((" ".join(words), cut(r["highlights"], rng, 200, 320)))
    pairs.extend(TRICKY)

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "rouge_l.jsonl", "w", encoding="utf-8") as f:
        for prediction, reference in pairs:
            s = scorer.score(reference, prediction)["rougeL"]
            f.write(json.dumps({
                "prediction": prediction,
                "reference": reference,
                "precision": s.precision,
                "recall": s.recall,
                "fmeasure": s.fmeasure,
            }, ensure_ascii=False) + "\n")

    # Stemmer golden: words from the articles, stratified by ending so that every
    # suffix rule is exercised, plus the words of the tricky pairs.
    stemmer = porter.PorterStemmer()
    assert stemmer.mode == porter.PorterStemmer.NLTK_EXTENSIONS
    vocab = set()
    for r in rows[:400]:
        for tok in re.split(r"[^a-z0-9]+", (r["article"] + " " + r["highlights"]).lower()):
            if len(tok) > 3:
                vocab.add(tok)
    for p, q in TRICKY:
        for tok in re.split(r"[^a-z0-9]+", (p + " " + q).lower()):
            if len(tok) > 3:
                vocab.add(tok)
    by_ending = defaultdict(list)
    for w in sorted(vocab):
        by_ending[w[-3:]].append(w)
    chosen = set()
    for ending in sorted(by_ending):
        ws = by_ending[ending]
        chosen.update(rng.sample(ws, min(1, len(ws))))
    chosen.update(rng.sample(sorted(vocab - chosen), 500))
    chosen.update(w for p, q in TRICKY for w in re.split(r"[^a-z0-9]+", (p + " " + q).lower()) if len(w) > 3)
    with open(OUT / "porter_stems.tsv", "w", encoding="utf-8") as f:
        for w in sorted(chosen):
            f.write(f"{w}\t{stemmer.stem(w)}\n")
    print(f"{len(pairs)} ROUGE-L pairs, {len(chosen)} stems written to {OUT}")


if __name__ == "__main__":
    main()
