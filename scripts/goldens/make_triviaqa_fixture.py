#!/usr/bin/env python3
"""Writes crates/sparq-tasks/tests/fixtures/triviaqa_rc.jsonl: five hand-made TriviaQA
questions in the Hugging Face schema of `mandarjoshi/trivia_qa` (configuration rc),
since the real rc files are not available offline.

The rows cover: a question with one evidence document in the 4,000-8,000 character
range among others out of range (tqa_1), one with none in range (tqa_2), one with
two in range (tqa_3), a repeated question_id (tqa_3 again), and one without any
document (tqa_4). Document lengths are exact; their text is filler.
"""
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "crates/sparq-tasks/tests/fixtures/triviaqa_rc.jsonl"


def doc(start, n):
    s = start + " "
    filler = "This sentence pads the evidence document to a fixed length. "
    while len(s) < n:
        s += filler
    return s[:n]


def answer(value, aliases):
    return {"aliases": aliases, "normalized_aliases": [a.lower() for a in aliases],
            "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
            "normalized_value": value.lower(), "type": "WikipediaEntity", "value": value}


def pages(docs):
    return {"doc_source": ["TagMe"] * len(docs), "filename": [f"doc{i}.txt" for i in range(len(docs))],
            "title": [f"Doc {i}" for i in range(len(docs))], "wiki_context": docs}


ROWS = [
    {"question": "What is the capital of France?", "question_id": "tqa_1", "question_source": "http://example.org/q1",
     "entity_pages": pages([doc("Short page.", 500), doc("Paris is the capital of France.", 4000), doc("A very long page.", 9000)]),
     "answer": answer("Paris", ["Paris", "Paris, France", "City of Light"])},
    {"question": "Which river is longest?", "question_id": "tqa_2", "question_source": "http://example.org/q2",
     "entity_pages": pages([doc("Too short.", 3999), doc("Too long.", 8001)]),
     "answer": answer("Nile", ["Nile", "River Nile"])},
    {"question": "Who wrote Hamlet?", "question_id": "tqa_3", "question_source": "http://example.org/q3",
     "entity_pages": pages([doc("Alpha document about Hamlet.", 5000), doc("Beta document about Shakespeare.", 8000)]),
     "answer": answer("William Shakespeare", ["William Shakespeare", "Shakespeare", "The Bard"])},
    {"question": "Who wrote Hamlet? (asked again)", "question_id": "tqa_3", "question_source": "http://example.org/q3b",
     "entity_pages": pages([doc("Gamma document on the play.", 6000)]),
     "answer": answer("William Shakespeare", ["William Shakespeare"])},
    {"question": "What has no evidence?", "question_id": "tqa_4", "question_source": "http://example.org/q4",
     "entity_pages": pages([]),
     "answer": answer("Nothing", ["Nothing"])},
]

if __name__ == "__main__":
    with open(OUT, "w", encoding="utf-8") as f:
        for r in ROWS:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(ROWS)} rows -> {OUT}")
