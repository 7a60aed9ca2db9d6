//! The sweep grid (models x tasks x method settings), read from a TOML file or built
//! from flags, its validation, the expansion of target ratios into settings, and
//! `run.toml`, which records a run's grid so that resuming on a directory holding a
//! different grid is refused.
//!
//! Ratio-targeted settings. `sparq:ratio=c` is resolved per example by
//! sparq-attention (r = round(c*d), k = round(c*S/2), the equal split of SPEC 4).
//! The baselines have no `ratio=` key, so for them a ratio becomes a fixed
//! `name:k=K` per model and task: K is the whole k whose SPEC 4 transfer at
//! S = the task's mean prompt length (rounded) is closest to c on a log scale. That is
//! the S `aggregate` costs settings at, so the reported ratio matches the target. A
//! ratio a method cannot reach within 5% (FlexGen reads every key, so it never gets
//! below about 1/2; LM-Infinite needs k > its 16 sinks) is skipped and said so.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sparq_attention::{MethodSpec, ModelShape, Ratio, SparqBudget};

use crate::samples::canonical_spec;

/// A refused config, `run.toml` or grid. Messages name the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The methods a `ratios` entry expands to when `ratio_methods` is not given.
pub const RATIO_METHODS: [&str; 5] = ["sparq", "h2o", "lminf", "flexgen", "oracle"];

/// How far a baseline's best k may miss a target ratio before the ratio is skipped.
const RATIO_TOLERANCE: f64 = 0.05;

/// A sweep as written in a config file (`sparq sweep --config FILE`) or assembled
/// from `--models`, `--tasks`, `--method`, `--ratios`, `--limit` and `--seed`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    pub models: Vec<String>,
    /// Task names or custom task files; the caller checks that they exist.
    pub tasks: Vec<String>,
    /// Method specs; `dense` is added first when missing (it is the reference).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Target compression ratios such as `"1/8"` or `"0.125"`, each expanded into a
    /// setting of every method in `ratio_methods`.
    #[serde(default)]
    pub ratios: Vec<String>,
    /// Methods the ratios expand to; default all of [`RATIO_METHODS`].
    #[serde(default)]
    pub ratio_methods: Option<Vec<String>>,
    /// Examples per task (the first `limit` after the task's seeded order).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Overrides every task's declared seed; `None` keeps each task's own.
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

impl SweepConfig {
    /// Reads a config file; unknown keys and wrong types are refused with their line.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            action: "read the sweep config",
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: toml_message(&e),
        })
    }

    /// Checks every entry and returns the grid; `origin` (the file, or `--flags`)
    /// starts every message.
    pub fn validate(&self, origin: &str) -> Result<SweepGrid, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        };
        nonempty_unique("models", &self.models).map_err(invalid)?;
        nonempty_unique("tasks", &self.tasks).map_err(invalid)?;

        let mut methods = vec![MethodSpec::Dense];
        for (i, m) in self.methods.iter().enumerate() {
            let spec: MethodSpec = m
                .parse()
                .map_err(|e| invalid(format!("methods[{i}] = `{m}`: {e}")))?;
            if spec == MethodSpec::Dense {
                continue;
            }
            if let Some(j) = methods.iter().position(|s| *s == spec) {
                let earlier = self
                    .methods
                    .iter()
                    .position(|x| x.parse::<MethodSpec>().ok().as_ref() == Some(&methods[j]));
                let earlier = earlier.map_or_else(String::new, |j| format!(" (methods[{j}])"));
                return Err(invalid(format!(
                    "methods[{i}] = `{m}` repeats `{spec}`{earlier}"
                )));
            }
            methods.push(spec);
        }

        let mut ratios: Vec<Ratio> = Vec::new();
        for (i, r) in self.ratios.iter().enumerate() {
            let c = parse_ratio(r).map_err(|e| invalid(format!("ratios[{i}] = `{r}`: {e}")))?;
            if ratios.contains(&c) {
                return Err(invalid(format!("ratios[{i}] = `{r}` repeats {c}")));
            }
            ratios.push(c);
        }

        let ratio_methods = match &self.ratio_methods {
            None => RATIO_METHODS.iter().map(|m| m.to_string()).collect(),
            Some(list) => {
                for (i, m) in list.iter().enumerate() {
                    if !RATIO_METHODS.contains(&m.as_str()) {
                        return Err(invalid(format!(
                            "ratio_methods[{i}] = `{m}`: expected one of {}",
                            RATIO_METHODS.join(", ")
                        )));
                    }
                }
                nonempty_unique("ratio_methods", list).map_err(invalid)?;
                list.clone()
            }
        };
        if self.limit == Some(0) {
            return Err(invalid(
                "limit = 0: expected at least 1 example per task (leave it out for all)".into(),
            ));
        }
        Ok(SweepGrid {
            models: self.models.clone(),
            tasks: self.tasks.clone(),
            methods,
            ratios,
            ratio_methods,
            limit: self.limit,
            seed: self.seed,
            data_dir: self.data_dir.clone(),
        })
    }
}

fn toml_message(e: &toml::de::Error) -> String {
    // toml's message spans several lines with a caret under the offending text.
    e.to_string().trim_end().to_string()
}

fn nonempty_unique(key: &str, list: &[String]) -> Result<(), String> {
    if list.is_empty() {
        return Err(format!("`{key}` is empty; expected at least one entry"));
    }
    for (i, item) in list.iter().enumerate() {
        if item.trim().is_empty() {
            return Err(format!("{key}[{i}] is empty"));
        }
        if let Some(j) = list[..i].iter().position(|x| x == item) {
            return Err(format!("{key}[{i}] = `{item}` repeats {key}[{j}]"));
        }
    }
    Ok(())
}

/// `1/8` or `0.125`, in `(0, 1]`.
pub fn parse_ratio(s: &str) -> Result<Ratio, String> {
    let expected = "expected a compression ratio in (0, 1] such as 1/8 or 0.125";
    let s = s.trim();
    let c = match s.split_once('/') {
        Some((a, b)) => match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
            (Ok(a), Ok(b)) => a / b,
            _ => return Err(format!("not a number; {expected}")),
        },
        None => s
            .parse::<f64>()
            .map_err(|_| format!("not a number; {expected}"))?,
    };
    Ratio::new(c).ok_or_else(|| format!("out of range; {expected}"))
}

/// A validated sweep: dense first, then the given settings in order.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepGrid {
    pub models: Vec<String>,
    pub tasks: Vec<String>,
    pub methods: Vec<MethodSpec>,
    pub ratios: Vec<Ratio>,
    pub ratio_methods: Vec<String>,
    pub limit: Option<usize>,
    pub seed: Option<u64>,
    pub data_dir: Option<PathBuf>,
}

/// The settings of one model and task.
#[derive(Clone, Debug, PartialEq)]
pub struct Expansion {
    /// Dense first, then `methods`, then the ratio-targeted settings; no spec twice.
    pub specs: Vec<MethodSpec>,
    /// Ratio targets a method could not reach, with the reason.
    pub skipped: Vec<String>,
}

impl SweepGrid {
    /// The settings to run for one model and task. `mean_prompt_tokens` is the mean
    /// prompt length of the task's examples after truncation (known once they are
    /// tokenized); only ratio-targeted baselines use it.
    pub fn settings(&self, shape: &ModelShape, mean_prompt_tokens: f64) -> Expansion {
        let s = (mean_prompt_tokens.round() as usize).max(1);
        let mut specs = self.methods.clone();
        let mut skipped = Vec::new();
        for &c in &self.ratios {
            for method in &self.ratio_methods {
                match spec_for_ratio(method, c, shape, s) {
                    Ok(spec) if !specs.contains(&spec) => specs.push(spec),
                    Ok(_) => {}
                    Err(reason) => skipped.push(reason),
                }
            }
        }
        Expansion { specs, skipped }
    }

    /// What `run.toml` records of this grid.
    pub fn manifest(&self) -> RunManifest {
        RunManifest {
            harness_version: env!("CARGO_PKG_VERSION").to_string(),
            models: self.models.clone(),
            tasks: self.tasks.clone(),
            methods: self.methods.iter().map(ToString::to_string).collect(),
            ratios: self.ratios.iter().map(ToString::to_string).collect(),
            ratio_methods: if self.ratios.is_empty() {
                Vec::new()
            } else {
                self.ratio_methods.clone()
            },
            limit: self.limit,
            seed: self.seed,
            data_dir: self.data_dir.as_ref().map(|p| p.display().to_string()),
            settings: Vec::new(),
        }
    }
}

/// The setting of `method` for target ratio `c` at `s` prompt tokens (see the module
/// comment), or why there is none.
pub fn spec_for_ratio(
    method: &str,
    c: Ratio,
    shape: &ModelShape,
    s: usize,
) -> Result<MethodSpec, String> {
    if method == "sparq" {
        return Ok(MethodSpec::Sparq {
            budget: SparqBudget::Ratio(c),
            l: None,
            realloc: None,
            rank: None,
        });
    }
    let target = c.value();
    let mut best: Option<(f64, f64, MethodSpec)> = None;
    // k >= s would keep every position, i.e. not be a budget at all.
    for k in 1..s {
        let Ok(spec) = MethodSpec::from_str(&format!("{method}:k={k}")) else {
            continue;
        };
        let Ok(config) = spec.resolve(shape, s) else {
            continue;
        };
        let ratio = config.budget().compression_ratio(s, shape.head_dim);
        let distance = (ratio / target).ln().abs();
        if best.as_ref().is_none_or(|(d, _, _)| distance < *d) {
            best = Some((distance, ratio, spec));
        }
    }
    match best {
        Some((_, ratio, spec)) if (ratio / target - 1.0).abs() <= RATIO_TOLERANCE => Ok(spec),
        Some((_, ratio, spec)) => Err(format!(
            "{method} at ratio {c}: unreachable at S = {s} (its nearest setting, `{spec}`, moves {:.3} of dense's data)",
            ratio
        )),
        None => Err(format!("{method} at ratio {c}: no valid k below S = {s}")),
    }
}

/// `run.toml`: the resolved settings of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunManifest {
    pub harness_version: String,
    pub models: Vec<String>,
    pub tasks: Vec<String>,
    /// Canonical specs, dense first.
    pub methods: Vec<String>,
    /// Canonical ratios (`1/8`).
    #[serde(default)]
    pub ratios: Vec<String>,
    #[serde(default)]
    pub ratio_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// Every (model, task) expanded so far, with its settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<ResolvedSettings>,
}

/// The settings one (model, task) ran with, as [`SweepGrid::settings`] expanded them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedSettings {
    pub model: String,
    pub task: String,
    pub mean_prompt_tokens: f64,
    pub specs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl RunManifest {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            action: "read",
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: toml_message(&e),
        })
    }

    /// Writes through a temporary file and a rename, so a crash leaves the old or the
    /// new manifest, never half of one.
    pub fn write(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string(self).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: format!("cannot encode the run settings: {e}"),
        })?;
        let text = format!("# Written by sparq; `sparq sweep` refuses to resume this directory with another grid.\n{text}");
        crate::write_atomic(path, text.as_bytes()).map_err(|e| match e {
            crate::ReportError::Io {
                path,
                action,
                source,
            } => ConfigError::Io {
                path,
                action,
                source,
            },
            other => ConfigError::Parse {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        })
    }

    /// Records (or replaces) the expansion of one model and task.
    pub fn record_settings(
        &mut self,
        model: &str,
        task: &str,
        mean_prompt_tokens: f64,
        expansion: &Expansion,
    ) {
        let entry = ResolvedSettings {
            model: model.to_string(),
            task: task.to_string(),
            mean_prompt_tokens,
            specs: expansion.specs.iter().map(ToString::to_string).collect(),
            skipped: expansion.skipped.clone(),
        };
        match self
            .settings
            .iter_mut()
            .find(|s| s.model == model && s.task == task)
        {
            Some(s) => *s = entry,
            None => self.settings.push(entry),
        }
    }
}

/// Whether two manifests describe the same grid: models, tasks, methods (compared
/// canonically), ratios, ratio methods, limit and seed. The harness version, the data
/// directory and the recorded expansions are not compared: upgrading the harness or
/// moving the data must not strand a half-finished sweep (each sample records its
/// task version).
pub fn same_grid(a: &RunManifest, b: &RunManifest) -> bool {
    grid_difference(a, b).is_none()
}

/// The first field in which two grids differ, for the refusal message.
pub fn grid_difference(a: &RunManifest, b: &RunManifest) -> Option<String> {
    fn canon(v: &[String]) -> Vec<String> {
        v.iter()
            .map(|s| canonical_spec(s).unwrap_or_else(|_| s.clone()))
            .collect()
    }
    fn ratios(v: &[String]) -> Vec<String> {
        v.iter()
            .map(|s| parse_ratio(s).map_or_else(|_| s.clone(), |r| r.to_string()))
            .collect()
    }
    fn differ<T: PartialEq + fmt::Debug>(field: &str, x: T, y: T) -> Option<String> {
        (x != y).then(|| format!("`{field}` differs: {x:?} here, {y:?} in the other"))
    }
    differ("models", &a.models, &b.models)
        .or_else(|| differ("tasks", &a.tasks, &b.tasks))
        .or_else(|| differ("methods", canon(&a.methods), canon(&b.methods)))
        .or_else(|| differ("ratios", ratios(&a.ratios), ratios(&b.ratios)))
        .or_else(|| differ("ratio_methods", &a.ratio_methods, &b.ratio_methods))
        .or_else(|| differ("limit", a.limit, b.limit))
        .or_else(|| differ("seed", a.seed, b.seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: ModelShape = ModelShape {
        head_dim: 64,
        group: 3,
        kv_heads: 3,
        layers: 30,
    };

    fn config(toml: &str) -> Result<SweepGrid, String> {
        let cfg: SweepConfig = toml::from_str(toml).map_err(|e| e.to_string())?;
        cfg.validate("sweep.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn paper_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/paper.toml");
        let grid = SweepConfig::from_file(&path)
            .unwrap()
            .validate("paper.toml")
            .unwrap();
        assert_eq!(grid.models, ["models/SmolLM2-135M-Instruct.Q4_1.gguf"]);
        assert_eq!(
            grid.tasks,
            ["squad", "cnn_dailymail", "repetition", "wikitext"]
        );
        let specs: Vec<String> = grid.methods.iter().map(ToString::to_string).collect();
        assert_eq!(specs.len(), 1 + 4 + 5 + 5);
        assert_eq!(specs[0], "dense");
        assert!(specs.contains(&"sparq:r=8,k=128,l=32".to_string()));
        assert!(specs.contains(&"lminf:k=768".to_string()));
        assert!(grid.ratios.is_empty());
    }

    #[test]
    fn refusals_name_the_entry() {
        let base = "models = [\"m\"]\ntasks = [\"squad\"]\n";
        let cases = [
            (
                "methods = [\"dense\", \"sparq:r=8\"]",
                "sweep.toml: methods[1] = `sparq:r=8`: method `sparq` needs key `k`",
            ),
            (
                "methods = [\"h2o:k=8\", \"h2o:k=8\"]",
                "methods[1] = `h2o:k=8` repeats `h2o:k=8` (methods[0])",
            ),
            (
                "methods = [\"foo\"]",
                "methods[0] = `foo`: unknown attention method `foo`",
            ),
            (
                "ratios = [\"1/2\", \"3/2\"]",
                "ratios[1] = `3/2`: out of range; expected a compression ratio in (0, 1]",
            ),
            ("ratios = [\"x\"]", "ratios[0] = `x`: not a number"),
            (
                "ratios = [\"1/2\", \"0.5\"]",
                "ratios[1] = `0.5` repeats 1/2",
            ),
            (
                "ratio_methods = [\"dense\"]",
                "ratio_methods[0] = `dense`: expected one of sparq, h2o",
            ),
            ("limit = 0", "limit = 0: expected at least 1"),
        ];
        for (extra, want) in cases {
            let err = config(&format!("{base}{extra}\n")).unwrap_err();
            assert!(err.contains(want), "{extra}: `{err}` lacks `{want}`");
        }
        let err = config("models = []\ntasks = [\"squad\"]\n").unwrap_err();
        assert!(err.contains("`models` is empty"), "{err}");
        let err = config("models = [\"m\", \"m\"]\ntasks = [\"squad\"]\n").unwrap_err();
        assert!(err.contains("models[1] = `m` repeats models[0]"), "{err}");
        let err =
            config("models = [\"m\"]\ntasks = [\"squad\"]\nmethod = [\"dense\"]\n").unwrap_err();
        assert!(err.contains("unknown field `method`"), "{err}");
        let err = config("models = [\"m\"]\ntasks = \"squad\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn from_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        fs::write(
            &path,
            "models = [\"m\"]\ntasks = [\"squad\"]\nlimit = \"ten\"\n",
        )
        .unwrap();
        let err = SweepConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&path.display().to_string()) && err.contains("line 3"),
            "{err}"
        );
        let err = SweepConfig::from_file(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.toml: cannot read the sweep config"),
            "{err}"
        );
    }

    #[test]
    fn ratios_expand_to_every_method() {
        let grid = config("models = [\"m\"]\ntasks = [\"squad\"]\nmethods = [\"h2o:k=383\"]\nratios = [\"1/4\", \"1/8\"]\n")
            .unwrap();
        let e = grid.settings(&SMOL, 1600.4);
        let specs: Vec<String> = e.specs.iter().map(ToString::to_string).collect();
        // S = 1600, d = 64. LM-Infinite and oracle: 2kd + 2d = c(2Sd + 2d), k = c(S+1) - 1
        // = 399.25 -> 399 at 1/4, 199.1 -> 199 at 1/8. H2O: k = c(S+1) - 1 - S/d
        // = 374.25 -> 374 and 174.1 -> 174. h2o:k=383 given explicitly stays once.
        assert_eq!(
            specs,
            [
                "dense",
                "h2o:k=383",
                "sparq:ratio=1/4",
                "h2o:k=374",
                "lminf:k=399",
                "oracle:k=399",
                "sparq:ratio=1/8",
                "h2o:k=174",
                "lminf:k=199",
                "oracle:k=199",
            ]
        );
        // FlexGen reads every key: its transfer stays above half of dense's.
        assert_eq!(e.skipped.len(), 2);
        assert!(
            e.skipped[0].starts_with("flexgen at ratio 1/4: unreachable at S = 1600"),
            "{}",
            e.skipped[0]
        );

        let grid = config("models = [\"m\"]\ntasks = [\"t\"]\nratios = [\"0.75\"]\nratio_methods = [\"flexgen\"]\n").unwrap();
        // FlexGen: Sd + kd + 2d = c(2Sd + 2d), k = 2c(S+1) - S - 2 = 799.5: 799 and 800
        // miss by the same number of elements, and on the log scale 800 is nearer.
        let e = grid.settings(&SMOL, 1600.0);
        assert_eq!(
            e.specs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["dense", "flexgen:k=800"]
        );
        assert!(e.skipped.is_empty());
    }

    #[test]
    fn manifests_round_trip_and_compare_grids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        let grid = config("models = [\"m\"]\ntasks = [\"squad\", \"wikitext\"]\nmethods = [\"sparq:k=128,r=8\"]\nratios = [\"0.125\"]\nlimit = 20\n")
            .unwrap();
        let mut manifest = grid.manifest();
        assert_eq!(manifest.methods, ["dense", "sparq:r=8,k=128"]);
        assert_eq!(manifest.ratios, ["1/8"]);
        manifest.record_settings("m", "squad", 1600.0, &grid.settings(&SMOL, 1600.0));
        manifest.write(&path).unwrap();
        let back = RunManifest::read(&path).unwrap();
        assert_eq!(back, manifest);
        assert_eq!(back.settings[0].specs[2], "sparq:ratio=1/8");

        let mut other = grid.manifest();
        other.data_dir = Some("elsewhere".into());
        other.harness_version = "9.9.9".into();
        assert!(
            same_grid(&back, &other),
            "version, data and expansions are not the grid"
        );
        other.methods = vec!["dense".into(), "sparq:r=8,k=128".into()];
        assert!(same_grid(&back, &other));
        other.limit = Some(21);
        assert!(!same_grid(&back, &other));
        assert_eq!(
            grid_difference(&back, &other).unwrap(),
            "`limit` differs: Some(20) here, Some(21) in the other"
        );
        other.limit = Some(20);
        other.tasks.reverse();
        assert!(grid_difference(&back, &other)
            .unwrap()
            .starts_with("`tasks` differs"));

        fs::write(&path, "models = [\"m\"]\n").unwrap();
        let err = RunManifest::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("run.toml") && err.contains("missing field"),
            "{err}"
        );
    }
}
