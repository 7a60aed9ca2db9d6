#!/usr/bin/env python3
"""Writes where the SPEC's regular expressions split the real repetition and WikiText
data, as character offsets only (no text), for sparq-tasks' tests.

The splits are computed with Python's `re`, the reference the SPEC's patterns are
written for, on the files of the shared data directory:

    python3 scripts/goldens/make_split_goldens.py [--data-dir ../shared/data]

Output: crates/sparq-tasks/tests/golden/splits.json
  repetition.contexts      [start, end] of every context (character offsets)
  repetition.pair_counts   number of (prompt, reference) pairs in each context
  repetition.pairs_head    [prompt_start, split, reference_end] of the first two contexts' pairs
  repetition.pairs_sha256  sha256 of "i:prompt_start,split,reference_end;" over every pair
  wikitext.articles        [title, article length, prefix end or null, reference end or null]
All offsets are absolute in the file (repetition) or in the article (WikiText).
"""
import argparse
import hashlib
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "crates/sparq-tasks/tests/golden/splits.json"

CONTEXT = re.compile(r"(.{6000,}?)(?=\s|$)", re.DOTALL)
PAIR = re.compile(r"(.{128,}?)(\s.{255,}?)(?=\s|$)", re.DOTALL)
WIKI = re.compile(r"^(.{6000}.*?)(\s.{399}.*?)(?:\s|$)", re.DOTALL)
# A level-1 heading line: " = Title = " (level 2 reads " = = Title = = ").
HEADING = re.compile(r" = (?!=)(.*?)(?<!=) = \n?")


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared/data"))
    data = Path(ap.parse_args().data_dir)

    shakespeare_path = data / "tinyshakespeare/input.txt"
    text = shakespeare_path.read_text(encoding="utf-8")
    contexts, counts, head, h = [], [], [], hashlib.sha256()
    for i, c in enumerate(CONTEXT.finditer(text)):
        contexts.append([c.start(), c.end()])
        n = 0
        for p in PAIR.finditer(c.group(0)):
            triple = [c.start() + p.start(1), c.start() + p.start(2), c.start() + p.end(2)]
            h.update(f"{i}:{triple[0]},{triple[1]},{triple[2]};".encode())
            if i < 2:
                head.append(triple)
            n += 1
        counts.append(n)

    wiki_path = data / "wikitext2/wiki.test.raw"
    articles, current = [], None
    for line in wiki_path.read_text(encoding="utf-8").splitlines(keepends=True):
        m = HEADING.fullmatch(line)
        if m:
            current = [m.group(1), line]
            articles.append(current)
        elif current is not None:
            current[1] += line
    wiki = []
    for title, body in articles:
        m = WIKI.search(body)
        wiki.append([title, len(body), m.end(1) if m else None, m.end(2) if m else None])

    OUT.write_text(json.dumps({
        "repetition": {
            "file": "tinyshakespeare/input.txt",
            "file_sha256": sha256_file(shakespeare_path),
            "contexts": contexts,
            "pair_counts": counts,
            "pairs_head": head,
            "pairs_sha256": h.hexdigest(),
        },
        "wikitext": {
            "file": "wikitext2/wiki.test.raw",
            "file_sha256": sha256_file(wiki_path),
            "articles": wiki,
        },
    }, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{len(contexts)} contexts, {sum(counts)} pairs, {len(wiki)} articles "
          f"({sum(1 for w in wiki if w[2] is not None)} long enough) -> {OUT}")


if __name__ == "__main__":
    main()
