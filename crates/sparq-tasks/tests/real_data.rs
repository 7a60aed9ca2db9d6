//! The built-in tasks on the real data of `../shared/data` (or `SPARQ_DATA_DIR`).
//! Each test prints a note and passes when the data is absent.
//!
//! Prompts are checked by rebuilding them independently from the raw files (with
//! plain `serde_json` and string formatting, not the crate's code), and the splits
//! against offsets that Python's `re` produced (`scripts/goldens/make_split_goldens.py`).
//! The seeded choices (which confusion paragraphs, which shot, the example order) are
//! pinned: a change to them changes every result and must come with a version bump.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use sparq_tasks::{load_task, Example, LoadOptions, LoadedTask, Metric, TokenCounter};

struct Words;
impl TokenCounter for Words {
    fn count_tokens(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }
}

/// The shared data directory, if present.
fn data_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SPARQ_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    if dir.join("README.md").is_file() {
        Some(dir)
    } else {
        println!(
            "note: real data not found at {} (set SPARQ_DATA_DIR); skipping",
            dir.display()
        );
        None
    }
}

fn load(name: &str, dir: &Path, limit: Option<usize>) -> LoadedTask {
    let options = LoadOptions {
        data_dir: Some(dir.to_path_buf()),
        limit,
        ..LoadOptions::default()
    };
    load_task(name, &options, &Words).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn golden_splits() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/splits.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A data file, checked against the hash the goldens were made from.
fn data_file(dir: &Path, golden: &Value) -> String {
    let path = dir.join(golden["file"].as_str().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        sha256(&bytes),
        golden["file_sha256"].as_str().unwrap(),
        "{} differs from the file the goldens were made from",
        path.display()
    );
    String::from_utf8(bytes).unwrap()
}

fn ids(examples: &[Example], n: usize) -> Vec<&str> {
    examples.iter().take(n).map(|e| e.id.as_str()).collect()
}

fn first_shortest(answers: &[String]) -> &str {
    let mut best = &answers[0];
    for a in answers {
        if a.chars().count() < best.chars().count() {
            best = a;
        }
    }
    best
}

// ---------------------------------------------------------------- SQuAD

/// Pinned for the declared seed: each example's id, its 8 paragraphs in prompt
/// order as (article, paragraph) positions in `dev-v1.1.json`, and the shot's
/// question id.
type SquadPin = (&'static str, [(usize, usize); 8], &'static str);
const SQUAD_PINNED: &[SquadPin] = &[
    (
        "571c9074dd7acb1400e4c100",
        [
            (10, 5),
            (27, 36),
            (27, 3),
            (46, 43),
            (25, 26),
            (12, 14),
            (0, 25),
            (41, 39),
        ],
        "571c9074dd7acb1400e4c102",
    ),
    (
        "572963876aef051400154dd6",
        [
            (39, 12),
            (28, 6),
            (23, 8),
            (3, 6),
            (25, 17),
            (16, 15),
            (26, 13),
            (22, 32),
        ],
        "572963876aef051400154dd5",
    ),
    (
        "57111380a58dae1900cd6bda",
        [
            (14, 33),
            (24, 95),
            (22, 13),
            (47, 14),
            (10, 35),
            (46, 9),
            (2, 23),
            (37, 34),
        ],
        "57111380a58dae1900cd6bd9",
    ),
];

struct Squad {
    /// (article, paragraph) -> prompt paragraph text.
    formatted: HashMap<(usize, usize), String>,
    /// question id -> (article, paragraph, question, answers)
    questions: HashMap<String, (usize, usize, String, Vec<String>)>,
    titles: Vec<String>,
    /// (article, paragraph) -> question ids
    by_paragraph: HashMap<(usize, usize), Vec<String>>,
}

fn read_squad(dir: &Path) -> Squad {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("squad_v1.1/dev-v1.1.json")).unwrap(),
    )
    .unwrap();
    let mut s = Squad {
        formatted: HashMap::new(),
        questions: HashMap::new(),
        titles: Vec::new(),
        by_paragraph: HashMap::new(),
    };
    for (a, article) in v["data"].as_array().unwrap().iter().enumerate() {
        let title = article["title"].as_str().unwrap().replace('_', " ");
        for (p, para) in article["paragraphs"].as_array().unwrap().iter().enumerate() {
            let context = para["context"].as_str().unwrap();
            s.formatted
                .insert((a, p), format!("Title: {title}. Background: {context}"));
            for qa in para["qas"].as_array().unwrap() {
                let id = qa["id"].as_str().unwrap().to_string();
                let answers = qa["answers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x["text"].as_str().unwrap().to_string())
                    .collect();
                s.by_paragraph.entry((a, p)).or_default().push(id.clone());
                s.questions.insert(
                    id,
                    (a, p, qa["question"].as_str().unwrap().to_string(), answers),
                );
            }
        }
        s.titles.push(title);
    }
    s
}

/// Reads the 8 paragraphs back off the front of a prompt (paragraphs may contain
/// newlines, so match whole formatted paragraphs).
fn paragraphs_of(input: &str, squad: &Squad) -> Vec<(usize, usize)> {
    let mut rest = input;
    let mut out = Vec::new();
    while !rest.starts_with("From what you've just read about ") {
        // The title names the article; then find which of its paragraphs this is.
        let title = rest
            .strip_prefix("Title: ")
            .and_then(|r| r.split_once(". Background: "))
            .map(|(t, _)| t)
            .unwrap_or_else(|| panic!("no paragraph at {:?}", &rest[..80.min(rest.len())]));
        let article = squad.titles.iter().position(|t| t == title).unwrap();
        let (pos, text) = squad
            .formatted
            .iter()
            .filter(|((a, _), t)| {
                *a == article && rest.starts_with(t.as_str()) && rest[t.len()..].starts_with('\n')
            })
            // The longest match, in case one paragraph is a prefix of another.
            .max_by_key(|(_, t)| t.len())
            .unwrap_or_else(|| panic!("unknown paragraph at {:?}", &rest[..80.min(rest.len())]));
        out.push(*pos);
        rest = &rest[text.len() + 1..];
    }
    out
}

/// The prompt rebuilt from positions, by plain formatting.
fn squad_prompt(squad: &Squad, id: &str, paragraphs: &[(usize, usize)], shot: &str) -> String {
    let (a, _, question, _) = &squad.questions[id];
    let (_, _, shot_question, shot_answers) = &squad.questions[shot];
    let context: Vec<&str> = paragraphs
        .iter()
        .map(|p| squad.formatted[p].as_str())
        .collect();
    format!(
        "{}\nFrom what you've just read about {}, please answer the following questions.\
         \nQuestion: {}\nAnswer: {}\nQuestion: {}\nAnswer:",
        context.join("\n"),
        squad.titles[*a],
        shot_question,
        first_shortest(shot_answers),
        question
    )
}

#[test]
fn squad_prompts_rebuild_from_the_raw_json() {
    let Some(dir) = data_dir() else { return };
    let squad = read_squad(&dir);
    let task = load("squad", &dir, None);
    assert_eq!(task.summary.candidates, 10_570);
    assert_eq!(task.summary.built, 10_570);
    assert_eq!(task.summary.skipped_total(), 0);
    assert_eq!(task.version, Some(1));

    let mut pinned = Vec::new();
    for ex in &task.examples {
        let (a, p, _, answers) = &squad.questions[&ex.id];
        let paras = paragraphs_of(&ex.input, &squad);
        assert_eq!(paras.len(), 8, "{}", ex.id);
        assert!(
            paras.contains(&(*a, *p)),
            "{}: own paragraph missing",
            ex.id
        );
        // The shot: the question (and its shortest answer) after the closing line.
        // Questions can repeat word for word, so the answer picks among them.
        let after = ex
            .input
            .split("please answer the following questions.\nQuestion: ")
            .nth(1)
            .unwrap();
        let (shot_question, rest) = after.split_once("\nAnswer: ").unwrap();
        let shot_answer = rest.split("\nQuestion: ").next().unwrap();
        let is_shot = |q: &String| {
            let v = &squad.questions[q];
            *q != ex.id && v.2 == shot_question && first_shortest(&v.3) == shot_answer
        };
        let same = &squad.by_paragraph[&(*a, *p)];
        let shot = if same.len() > 1 {
            // Another question on the same paragraph.
            same.iter()
                .find(|q| is_shot(q))
                .unwrap_or_else(|| panic!("{}: shot not from its paragraph", ex.id))
                .clone()
        } else {
            squad.questions.keys().find(|q| is_shot(q)).unwrap().clone()
        };
        assert_eq!(
            ex.input,
            squad_prompt(&squad, &ex.id, &paras, &shot),
            "{}",
            ex.id
        );
        assert_eq!(ex.metric, Metric::PrefixMatch);
        let longest = answers
            .iter()
            .map(|x| x.split_whitespace().count())
            .max()
            .unwrap();
        assert_eq!(ex.max_new_tokens, 30.min(5 + longest));
        if pinned.len() < 3 {
            pinned.push((ex.id.clone(), paras, shot));
        }
    }
    let want: Vec<_> = SQUAD_PINNED
        .iter()
        .map(|(id, p, s)| (id.to_string(), p.to_vec(), s.to_string()))
        .collect();
    assert_eq!(pinned, want, "seeded SQuAD choices changed");

    // The limit takes the first examples of the same order.
    let small = load("squad", &dir, Some(3));
    assert_eq!(small.examples, task.examples[..3]);
}

#[test]
fn squad_pinned_full_text() {
    let Some(dir) = data_dir() else { return };
    let squad = read_squad(&dir);
    let task = load("squad", &dir, Some(1));
    let (id, paras, shot) = SQUAD_PINNED[0];
    let ex = &task.examples[0];
    assert_eq!(ex.id, id);
    assert_eq!(ex.input, squad_prompt(&squad, id, &paras, shot));
    assert_eq!(ex.input_sha256(), SQUAD_FIRST_SHA256);
}
const SQUAD_FIRST_SHA256: &str = "85bd470884444ff93aba5264172b67fd72ad381af6bf65a511bc25759abd4cb2";

// ---------------------------------------------------------------- CNN/DailyMail

#[test]
fn cnn_dailymail_examples_are_the_in_range_articles() {
    let Some(dir) = data_dir() else { return };
    let text = std::fs::read_to_string(dir.join("cnn_dailymail/test_first1000.jsonl")).unwrap();
    let mut expected: HashMap<String, (String, String)> = HashMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let article = v["article"].as_str().unwrap();
        if (4000..=8000).contains(&article.chars().count()) {
            expected.insert(
                v["idx"].to_string(),
                (
                    article.to_string(),
                    v["highlights"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    let task = load("cnn_dailymail", &dir, None);
    assert_eq!(task.summary.candidates, 1000);
    assert_eq!(task.summary.built, expected.len());
    assert_eq!(
        task.summary.skipped["article not within 4000-8000 characters"],
        1000 - expected.len()
    );
    for ex in &task.examples {
        let (article, highlights) = &expected[&ex.id];
        assert_eq!(ex.input, format!("Article: {article}\nSummary:"));
        assert_eq!(&ex.references, std::slice::from_ref(highlights));
        let n = highlights.split_whitespace().count();
        assert_eq!(
            (ex.max_new_tokens, ex.cut_output_to_tokens),
            (n.min(128), Some(n))
        );
        assert_eq!(ex.metric, Metric::RougeL);
    }
    assert_eq!(ids(&task.examples, 5), CNN_FIRST_IDS);
}
const CNN_FIRST_IDS: [&str; 5] = ["270", "878", "486", "763", "382"];

// ---------------------------------------------------------------- Repetition

#[test]
fn repetition_splits_match_python_re() {
    let Some(dir) = data_dir() else { return };
    let golden = golden_splits();
    let g = &golden["repetition"];
    let text = data_file(&dir, g);
    let chars: Vec<char> = text.chars().collect();
    let contexts: Vec<(usize, usize)> = g["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c[0].as_u64().unwrap() as usize,
                c[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let counts: Vec<usize> = g["pair_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as usize)
        .collect();

    let task = load("repetition", &dir, None);
    assert_eq!(task.summary.built, counts.iter().sum::<usize>());
    assert_eq!(task.summary.skipped_total(), 0);

    // Index the examples by (context, pair) and recover each one's offsets: pairs of
    // a context are consecutive, the first starting at the context's start.
    let by_id: HashMap<&str, &Example> = task.examples.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    for (i, &(start, end)) in contexts.iter().enumerate() {
        let context: String = chars[start..end].iter().collect();
        let mut pos = start;
        for j in 0..counts[i] {
            let ex = by_id[format!("ctx{i}-{j}").as_str()];
            let prompt = ex.input.strip_prefix(&format!("{context}\n")).unwrap();
            let reference = &ex.references[0];
            let split = pos + prompt.chars().count();
            let stop = split + reference.chars().count();
            assert_eq!(chars[pos..split].iter().collect::<String>(), prompt);
            assert_eq!(&chars[split..stop].iter().collect::<String>(), reference);
            hasher.update(format!("{i}:{pos},{split},{stop};").as_bytes());
            if i < 2 {
                head.push(vec![pos, split, stop]);
            }
            let n = reference.split_whitespace().count();
            assert_eq!(
                (ex.max_new_tokens, ex.cut_output_to_tokens),
                (n.min(128), Some(n))
            );
            pos = stop;
        }
        assert!(!by_id.contains_key(format!("ctx{i}-{}", counts[i]).as_str()));
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, g["pairs_sha256"].as_str().unwrap());
    let want_head: Vec<Vec<usize>> = serde_json::from_value(g["pairs_head"].clone()).unwrap();
    assert_eq!(head, want_head);
    assert_eq!(ids(&task.examples, 5), REPETITION_FIRST_IDS);
}
const REPETITION_FIRST_IDS: [&str; 5] =
    ["ctx116-4", "ctx98-10", "ctx160-6", "ctx108-10", "ctx23-0"];

// ---------------------------------------------------------------- WikiText

#[test]
fn wikitext_splits_match_python_re() {
    let Some(dir) = data_dir() else { return };
    let golden = golden_splits();
    let g = &golden["wikitext"];
    let raw = data_file(&dir, g);
    let chars: Vec<char> = raw.chars().collect();
    let task = load("wikitext", &dir, None);
    let by_id: HashMap<&str, &Example> = task.examples.iter().map(|e| (e.id.as_str(), e)).collect();
    let articles = g["articles"].as_array().unwrap();
    assert_eq!(task.summary.candidates, articles.len());
    // Articles are consecutive in the file from the first heading on, with the
    // lengths Python measured; cut them out here without the crate's splitter.
    let first_heading = format!(" = {} = \n", articles[0][0].as_str().unwrap());
    let mut start = raw[..raw.find(&first_heading).unwrap()].chars().count();
    let mut long = 0;
    for (i, a) in articles.iter().enumerate() {
        let id = format!("{i}:{}", a[0].as_str().unwrap());
        let article = &chars[start..start + a[1].as_u64().unwrap() as usize];
        start += article.len();
        let text = |r: std::ops::Range<u64>| -> String {
            article[r.start as usize..r.end as usize].iter().collect()
        };
        match (a[2].as_u64(), a[3].as_u64()) {
            (Some(prefix_end), Some(reference_end)) => {
                long += 1;
                let ex = by_id[id.as_str()];
                assert_eq!(ex.input, text(0..prefix_end), "{id}");
                let reference = ex.teacher_forced.as_deref().unwrap();
                assert_eq!(reference, text(prefix_end..reference_end), "{id}");
                assert!(ex
                    .input
                    .starts_with(&format!(" = {} = \n", a[0].as_str().unwrap())));
                assert_eq!(ex.references, [reference.to_string()]);
                assert_eq!(ex.max_new_tokens, reference.split_whitespace().count());
                assert_eq!(ex.metric, Metric::BitsPerChar);
            }
            _ => assert!(!by_id.contains_key(id.as_str()), "{id}"),
        }
    }
    assert_eq!(
        start,
        chars.len(),
        "the articles cover the rest of the file"
    );
    assert_eq!(long, 49);
    assert_eq!(task.summary.built, 49);
    assert_eq!(ids(&task.examples, 5), WIKITEXT_FIRST_IDS);
}
const WIKITEXT_FIRST_IDS: [&str; 5] = [
    "25:Battle of Dürenstein",
    "16:Clayton Kershaw",
    "40:Manila",
    "35:Brad Stevens",
    "8:Ironclad warship",
];

#[test]
fn tasks_are_reproducible_and_seed_dependent() {
    let Some(dir) = data_dir() else { return };
    for name in ["squad", "cnn_dailymail", "repetition", "wikitext"] {
        let a = load(name, &dir, Some(20));
        let b = load(name, &dir, Some(20));
        assert_eq!(a.examples, b.examples, "{name}");
        let options = LoadOptions {
            data_dir: Some(dir.clone()),
            limit: Some(20),
            seed: Some(1),
            ..LoadOptions::default()
        };
        let c = load_task(name, &options, &Words).unwrap();
        assert_eq!(c.seed, Some(1));
        assert_ne!(ids(&a.examples, 20), ids(&c.examples, 20), "{name}");
    }
}
