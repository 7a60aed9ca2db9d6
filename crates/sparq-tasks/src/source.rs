//! Where a task's records come from: a local file under the data directory, or the
//! Hugging Face hub's parquet files (read with polars and handed on as JSON objects,
//! so that hub rows and hand-written JSON fixtures go through the same code).

use std::fs::File;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};
use polars::prelude::{JsonFormat, JsonWriter, ParquetReader, SerReader, SerWriter};
use serde_json::{Map, Value};

use crate::decl::{DataDecl, TaskDecl};
use crate::error::TaskError;
use crate::jsonl;

/// The data a builder reads.
pub(crate) enum Raw {
    /// A file in the data directory, in its native layout.
    Local(PathBuf),
    /// Rows of the hub's parquet files, split after split, as JSON objects. Each row
    /// keeps the file and 1-based row number it came from, for error messages.
    Hub(Vec<HubRow>),
}

pub(crate) struct HubRow {
    pub file: PathBuf,
    pub row: usize,
    pub fields: Map<String, Value>,
}

/// Resolved data plus a description for the run record.
pub(crate) struct Loaded {
    pub raw: Raw,
    pub description: String,
}

/// The local file when the data directory has it; otherwise the hub, with an error
/// that says what both alternatives needed.
pub(crate) fn load(
    decl: &TaskDecl,
    data_dir: Option<&Path>,
    columns: &[&str],
    endpoint: &HubEndpoint,
) -> Result<Loaded, TaskError> {
    let local = data_dir.map(|d| d.join(&decl.data.local));
    if let Some(path) = &local {
        if path.is_file() {
            return Ok(Loaded {
                description: format!("local file {}", path.display()),
                raw: Raw::Local(path.clone()),
            });
        }
    }
    let (description, files) = match fetch_hub_files(&decl.data, endpoint) {
        Ok(found) => found,
        Err(reason) => {
            return Err(match local {
                Some(path) => TaskError::MissingDataFile {
                    task: decl.name.clone(),
                    path,
                    layout: decl.data.layout.clone(),
                    hub_error: Some(reason),
                },
                None => TaskError::HubUnavailable {
                    task: decl.name.clone(),
                    repo: decl.data.hub_repo.clone(),
                    reason,
                    layout: decl.data.layout.clone(),
                },
            })
        }
    };
    let mut rows = Vec::new();
    for file in &files {
        rows.extend(parquet_rows(file, columns)?);
    }
    Ok(Loaded {
        raw: Raw::Hub(rows),
        description,
    })
}

/// Which hub server to ask. Tests point it at a closed local port.
pub(crate) enum HubEndpoint {
    /// `HF_ENDPOINT` / `HF_HOME` as the hub's own tools read them.
    FromEnv,
    #[cfg(test)]
    Url(String),
}

/// Lists the dataset repository and downloads (or finds in the hub cache) the parquet
/// files of the declared configuration and splits. Returns a description and the
/// local paths; the error is a plain reason for the caller's message.
pub(crate) fn fetch_hub_files(
    data: &DataDecl,
    endpoint: &HubEndpoint,
) -> Result<(String, Vec<PathBuf>), String> {
    let builder = match endpoint {
        HubEndpoint::FromEnv => ApiBuilder::from_env(),
        #[cfg(test)]
        HubEndpoint::Url(url) => ApiBuilder::from_env().with_endpoint(url.clone()),
    };
    let api = builder
        .with_progress(false)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = match &data.hub_revision {
        Some(rev) => Repo::with_revision(data.hub_repo.clone(), RepoType::Dataset, rev.clone()),
        None => Repo::new(data.hub_repo.clone(), RepoType::Dataset),
    };
    let api_repo = api.repo(repo);
    let info = api_repo
        .info()
        .map_err(|e| format!("listing {}: {e}", data.hub_repo))?;
    let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let mut paths = Vec::new();
    for split in &data.hub_splits {
        let files = split_files(&names, &data.hub_config, split);
        if files.is_empty() {
            return Err(format!(
                "{} has no parquet files for configuration `{}`, split `{split}`",
                data.hub_repo, data.hub_config
            ));
        }
        for f in files {
            paths.push(
                api_repo
                    .get(f)
                    .map_err(|e| format!("downloading {}/{f}: {e}", data.hub_repo))?,
            );
        }
    }
    let description = format!(
        "Hugging Face dataset {}@{} ({}, {})",
        data.hub_repo,
        info.sha,
        data.hub_config,
        data.hub_splits.join(" + ")
    );
    Ok((description, paths))
}

/// The parquet files of one configuration and split, in name order (shards are
/// numbered). The hub uses two layouts: `config/split-00000-of-00001.parquet` in
/// dataset repositories and `config/split/0000.parquet` in its parquet conversions.
pub(crate) fn split_files<'a>(names: &[&'a str], config: &str, split: &str) -> Vec<&'a str> {
    let mut files: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| {
            let Some(rest) = name.strip_prefix(config).and_then(|r| r.strip_prefix('/')) else {
                return false;
            };
            if !rest.ends_with(".parquet") {
                return false;
            }
            match rest.split_once('/') {
                Some((dir, file)) => dir == split && !file.contains('/'),
                None => {
                    rest.starts_with(&format!("{split}-")) || rest == format!("{split}.parquet")
                }
            }
        })
        .collect();
    files.sort_unstable();
    files
}

/// Reads the named columns of a parquet file and turns each row into a JSON object
/// (nested structs and lists included) through polars' JSON-lines writer.
pub(crate) fn parquet_rows(path: &Path, columns: &[&str]) -> Result<Vec<HubRow>, TaskError> {
    let parquet_err = |message: String| TaskError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| TaskError::io(path, e))?;
    let mut reader = ParquetReader::new(file);
    let schema = reader.schema().map_err(|e| parquet_err(e.to_string()))?;
    if let Some(missing) = columns.iter().find(|c| !schema.contains(c)) {
        let have: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
        return Err(parquet_err(format!(
            "no column `{missing}` (columns: {})",
            have.join(", ")
        )));
    }
    let mut df = reader
        .with_columns(Some(columns.iter().map(|c| c.to_string()).collect()))
        .finish()
        .map_err(|e| parquet_err(e.to_string()))?;
    let mut buf = Vec::new();
    JsonWriter::new(&mut buf)
        .with_json_format(JsonFormat::JsonLines)
        .finish(&mut df)
        .map_err(|e| parquet_err(e.to_string()))?;
    let text = String::from_utf8(buf).map_err(|e| parquet_err(e.to_string()))?;
    jsonl::lines(&text)
        .map(|(row, line)| {
            Ok(HubRow {
                file: path.to_path_buf(),
                row,
                fields: jsonl::parse_object(path, row, line)?,
            })
        })
        .collect()
}

/// Reads a local file, naming it on failure.
pub(crate) fn read_text(path: &Path) -> Result<String, TaskError> {
    std::fs::read_to_string(path).map_err(|e| TaskError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decl::builtin_declarations;

    #[test]
    fn split_files_understands_both_hub_layouts() {
        let names = [
            "README.md",
            "plain_text/train-00000-of-00001.parquet",
            "plain_text/validation-00000-of-00001.parquet",
            "rc/validation-00001-of-00002.parquet",
            "rc/validation-00000-of-00002.parquet",
            "rc.nocontext/validation-00000-of-00001.parquet",
            "default/train/0000.parquet",
            "default/validation/0000.parquet",
            "wikitext-103-raw-v1/test-00000-of-00001.parquet",
        ];
        assert_eq!(
            split_files(&names, "plain_text", "validation"),
            ["plain_text/validation-00000-of-00001.parquet"]
        );
        assert_eq!(
            split_files(&names, "rc", "validation"),
            [
                "rc/validation-00000-of-00002.parquet",
                "rc/validation-00001-of-00002.parquet"
            ]
        );
        assert_eq!(
            split_files(&names, "default", "train"),
            ["default/train/0000.parquet"]
        );
        assert!(split_files(&names, "default", "test").is_empty());
    }

    /// Port 9 (discard) on localhost is closed: requests fail at once, with or
    /// without network access.
    fn closed() -> HubEndpoint {
        HubEndpoint::Url("http://127.0.0.1:9".into())
    }

    #[test]
    fn missing_local_file_names_path_layout_and_hub_failure() {
        let decl = &builtin_declarations().unwrap()[0];
        let dir = tempfile::tempdir().unwrap();
        let err = load(decl, Some(dir.path()), &["id"], &closed())
            .err()
            .unwrap();
        assert!(matches!(err, TaskError::MissingDataFile { .. }));
        let msg = err.to_string();
        let expected = dir.path().join("squad_v1.1/dev-v1.1.json");
        assert!(msg.contains(&expected.display().to_string()), "{msg}");
        assert!(msg.contains("official SQuAD v1.1 dev set"), "{msg}");
        assert!(msg.contains("hub fallback failed too"), "{msg}");
    }

    #[test]
    fn no_data_dir_and_no_hub_says_how_to_fix_it() {
        let decl = &builtin_declarations().unwrap()[4];
        let err = load(decl, None, &["text"], &closed()).err().unwrap();
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot reach the Hugging Face hub"),
            "{msg}"
        );
        assert!(msg.contains("Salesforce/wikitext"), "{msg}");
        assert!(msg.contains("point --data-dir"), "{msg}");
        assert!(msg.contains("wikitext2/wiki.test.raw"), "{msg}");
    }

    #[test]
    fn unreachable_hub_gives_a_reason() {
        let decl = &builtin_declarations().unwrap()[0];
        let err = fetch_hub_files(&decl.data, &closed()).unwrap_err();
        assert!(err.contains("rajpurkar/squad"), "{err}");
    }
}
