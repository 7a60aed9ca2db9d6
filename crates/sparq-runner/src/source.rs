//! Where a model comes from: a GGUF file, a local safetensors directory, or a Hugging
//! Face hub id (`org/name[@revision]`) fetched with `hf-hub` into its usual cache.

use std::path::{Path, PathBuf};

use crate::error::{Result, RunnerError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Gguf(PathBuf),
    Dir(PathBuf),
    Hub {
        repo: String,
        revision: Option<String>,
    },
}

impl ModelSource {
    /// Reads a `--model` value: an existing path is a file or directory; otherwise
    /// `org/name[@revision]` is a hub id.
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Self::Dir(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        let looks_like_path = spec.starts_with('.')
            || spec.starts_with('/')
            || spec.ends_with(".gguf")
            || spec.matches('/').count() != 1;
        if looks_like_path {
            return Err(RunnerError::model_file(
                path,
                "does not exist (expected a GGUF file, a directory with config.json, \
                 *.safetensors and tokenizer.json, or a hub id org/name[@revision])",
            ));
        }
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) => (r.to_string(), Some(rev.to_string())),
            None => (spec.to_string(), None),
        };
        Ok(Self::Hub { repo, revision })
    }

    /// A short name for reports: the file or directory name, or the hub id.
    pub fn display_name(&self) -> String {
        match self {
            Self::Gguf(p) | Self::Dir(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            Self::Hub { repo, revision } => match revision {
                Some(r) => format!("{repo}@{r}"),
                None => repo.clone(),
            },
        }
    }
}

/// Downloads (or finds in the hub cache) a checkpoint's `config.json`, tokenizer and
/// safetensors files; returns the directory holding them.
pub fn fetch_from_hub(repo: &str, revision: Option<&str>) -> Result<PathBuf> {
    use hf_hub::{api::sync::ApiBuilder, Repo, RepoType};
    let hint = |e: &dyn std::fmt::Display| RunnerError::Hub {
        message: format!(
            "could not fetch `{repo}` ({e}). Without network access, download the model \
             elsewhere and pass its local copy: --model /path/to/model.gguf, or a directory \
             holding config.json, *.safetensors and tokenizer.json"
        ),
    };
    let api = ApiBuilder::new()
        .with_progress(true)
        .build()
        .map_err(|e| hint(&e))?;
    let repo = match revision {
        Some(rev) => Repo::with_revision(repo.to_string(), RepoType::Model, rev.to_string()),
        None => Repo::new(repo.to_string(), RepoType::Model),
    };
    let api = api.repo(repo);
    let config = api.get("config.json").map_err(|e| hint(&e))?;
    api.get("tokenizer.json").map_err(|e| hint(&e))?;
    match api.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|source| RunnerError::Io {
                path: index.clone(),
                source,
            })?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| RunnerError::model_file(&index, format!("not valid JSON: {e}")))?;
            let mut shards: Vec<String> = json["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for shard in shards {
                api.get(&shard).map_err(|e| hint(&e))?;
            }
        }
        Err(_) => {
            api.get("model.safetensors").map_err(|e| hint(&e))?;
        }
    }
    Ok(config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_missing_paths_are_told_apart() {
        assert_eq!(
            ModelSource::parse("HuggingFaceTB/SmolLM2-135M@main").unwrap(),
            ModelSource::Hub {
                repo: "HuggingFaceTB/SmolLM2-135M".into(),
                revision: Some("main".into())
            }
        );
        let err = ModelSource::parse("./missing/model.gguf")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing/model.gguf") && err.contains("does not exist"),
            "{err}"
        );
    }
}
