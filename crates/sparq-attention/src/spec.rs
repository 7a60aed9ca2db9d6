//! Method spec strings (`name` or `name:key=value,...`, CLI.md): parsing, canonical
//! printing, validation against a model before any work starts, resolution of defaults
//! into a configured method, and the registry `sparq ls methods` prints.

use std::fmt;
use std::str::FromStr;

use crate::dense::Dense;
use crate::flexgen::FlexGen;
use crate::h2o::H2o;
use crate::lminf::LmInfinite;
use crate::method::{AttentionMethod, ModelShape};
use crate::oracle::Oracle;
use crate::sparq::{Rank, Sparq};
use crate::transfer::{self, Budget};

/// A refused method spec. Each message names the method, the key and what it accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("empty method spec; expected a method name such as `dense` or `sparq:r=16,k=128`")]
    Empty,
    #[error("unknown attention method `{name}`; known methods: {known}")]
    UnknownMethod { name: String, known: String },
    #[error("method `{method}`: expected `key=value`, found `{item}`")]
    Malformed { method: &'static str, item: String },
    #[error("method `{method}` has no key `{key}`; it accepts: {accepted}")]
    UnknownKey {
        method: &'static str,
        key: String,
        accepted: String,
    },
    #[error("method `{method}`: key `{key}` is given more than once")]
    DuplicateKey { method: &'static str, key: String },
    #[error("method `{method}` needs key `{key}` ({expected})")]
    MissingKey {
        method: &'static str,
        key: &'static str,
        expected: String,
    },
    #[error("method `{method}`: `{key}={value}` is not a number; expected {expected}")]
    BadNumber {
        method: &'static str,
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error("method `{method}`: `{key}={value}` is not accepted; expected {expected}")]
    BadValue {
        method: &'static str,
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error("method `{method}`: `{key}={value}` is out of range; expected {expected}")]
    OutOfRange {
        method: &'static str,
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error("method `{method}`: key `{key}` cannot be combined with `{other}`")]
    Conflict {
        method: &'static str,
        key: &'static str,
        other: &'static str,
    },
    #[error("model shape has {what}; attention needs a head dimension and a group of at least 1")]
    BadShape { what: String },
}

/// SparQ's compression target `c` in `(0, 1]`, written `1/8` or `0.125`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio(f64);

impl Ratio {
    pub fn new(c: f64) -> Option<Self> {
        (c > 0.0 && c <= 1.0).then_some(Self(c))
    }
    pub fn value(&self) -> f64 {
        self.0
    }
}

impl fmt::Display for Ratio {
    /// `1/n` when `c` is the reciprocal of a whole number (as the paper writes ratios),
    /// else the shortest decimal that reads back the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inv = 1.0 / self.0;
        let n = inv.round();
        if self.0 < 1.0 && (inv - n).abs() <= 1e-9 * n && (1.0 / n) == self.0 {
            write!(f, "1/{n}")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// How SparQ's `r` and `k` are given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SparqBudget {
    Fixed {
        r: usize,
        k: usize,
    },
    /// `r = round(c*d)`, `k = round(c*S/2)` with `S` the example's prompt length.
    Ratio(Ratio),
}

/// A parsed method spec. Keys left out stay `None` so that printing gives back what
/// was written (in canonical order); defaults are applied by [`MethodSpec::resolve`].
#[derive(Clone, Debug, PartialEq)]
pub enum MethodSpec {
    Dense,
    Sparq {
        budget: SparqBudget,
        l: Option<usize>,
        realloc: Option<bool>,
        rank: Option<Rank>,
    },
    H2o {
        k: usize,
        l: Option<usize>,
    },
    LmInfinite {
        k: usize,
        sinks: Option<usize>,
    },
    FlexGen {
        k: usize,
    },
    Oracle {
        k: usize,
    },
}

/// A method with every setting resolved for one model and prompt length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MethodConfig {
    Dense(Dense),
    Sparq(Sparq),
    H2o(H2o),
    LmInfinite(LmInfinite),
    FlexGen(FlexGen),
    Oracle(Oracle),
}

impl MethodConfig {
    pub fn build(&self) -> Box<dyn AttentionMethod> {
        match *self {
            MethodConfig::Dense(m) => Box::new(m),
            MethodConfig::Sparq(m) => Box::new(m),
            MethodConfig::H2o(m) => Box::new(m),
            MethodConfig::LmInfinite(m) => Box::new(m),
            MethodConfig::FlexGen(m) => Box::new(m),
            MethodConfig::Oracle(m) => Box::new(m),
        }
    }

    pub fn budget(&self) -> Budget {
        match self {
            MethodConfig::Dense(_) => Budget::Dense,
            MethodConfig::Sparq(m) => m.budget(),
            MethodConfig::H2o(m) => m.budget(),
            MethodConfig::LmInfinite(m) => m.budget(),
            MethodConfig::FlexGen(m) => m.budget(),
            MethodConfig::Oracle(m) => m.budget(),
        }
    }

    /// The canonical spec with every key written out, as `AttentionMethod::describe`.
    pub fn describe(&self) -> String {
        self.build().describe()
    }
}

/// One method in the registry that `sparq ls methods` prints.
#[derive(Clone, Copy, Debug)]
pub struct MethodInfo {
    pub name: &'static str,
    /// `(key, default)`; the default reads "required" for keys that must be given.
    pub keys: &'static [(&'static str, &'static str)],
    pub description: &'static str,
    pub paper: &'static str,
}

const REGISTRY: &[MethodInfo] = &[
    MethodInfo {
        name: "dense",
        keys: &[],
        description: "ordinary attention over every cached position",
        paper: "Vaswani et al. 2017, Attention Is All You Need (arXiv 1706.03762)",
    },
    MethodInfo {
        name: "sparq",
        keys: &[
            ("r", "required unless ratio (1..=head dim)"),
            ("k", "required unless ratio"),
            (
                "ratio",
                "instead of r and k: c in (0,1], r = round(c*d), k = round(c*S/2)",
            ),
            ("l", "k/4"),
            ("realloc", "true for MHA models, false for GQA"),
            ("rank", "logits (or probs)"),
        ],
        description:
            "approximate scores from r query components pick k positions for exact attention",
        paper: "Ribar et al. 2024, SparQ Attention (arXiv 2312.04985)",
    },
    MethodInfo {
        name: "h2o",
        keys: &[("k", "required"), ("l", "k/4")],
        description:
            "keeps the k+1 positions with the most attention so far, evicting the rest for good",
        paper: "Zhang et al. 2023, H2O: Heavy-Hitter Oracle (arXiv 2306.14048)",
    },
    MethodInfo {
        name: "lminf",
        keys: &[("k", "required"), ("sinks", "16")],
        description: "the first sinks positions and the most recent ones, k in all",
        paper: "Han et al. 2023, LM-Infinite (arXiv 2308.16137)",
    },
    MethodInfo {
        name: "flexgen",
        keys: &[("k", "required")],
        description:
            "exact softmax over all positions, only the k largest weights applied, unrenormalised",
        paper: "Sheng et al. 2023, FlexGen (arXiv 2303.06865)",
    },
    MethodInfo {
        name: "oracle",
        keys: &[("k", "required")],
        description:
            "the k positions with the largest exact scores, renormalised: a bound for top-k",
        paper: "Ribar et al. 2024 (arXiv 2312.04985), as the bound for top-k selection",
    },
];

/// Every method with its keys, defaults, a one-line description and its paper.
pub fn registry() -> &'static [MethodInfo] {
    REGISTRY
}

fn known_methods() -> String {
    REGISTRY
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `key=value` pairs of one spec, each key consumed at most once.
struct Params<'a> {
    method: &'static str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Params<'a> {
    fn parse(
        method: &'static str,
        rest: Option<&'a str>,
        accepted: &[&str],
    ) -> Result<Self, SpecError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(rest) = rest {
            for item in rest.split(',') {
                let (key, value) = item
                    .split_once('=')
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                    .ok_or_else(|| SpecError::Malformed {
                        method,
                        item: item.trim().to_string(),
                    })?;
                if !accepted.contains(&key) {
                    let accepted = if accepted.is_empty() {
                        "no keys".to_string()
                    } else {
                        accepted.join(", ")
                    };
                    return Err(SpecError::UnknownKey {
                        method,
                        key: key.to_string(),
                        accepted,
                    });
                }
                if pairs.iter().any(|(k, _)| *k == key) {
                    return Err(SpecError::DuplicateKey {
                        method,
                        key: key.to_string(),
                    });
                }
                pairs.push((key, value));
            }
        }
        Ok(Self { method, pairs })
    }

    fn raw(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// A whole number `>= min`, if given.
    fn count(&self, key: &'static str, min: usize) -> Result<Option<usize>, SpecError> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        let expected = format!("a whole number >= {min}");
        let n: usize = v.parse().map_err(|_| SpecError::BadNumber {
            method: self.method,
            key,
            value: v.to_string(),
            expected: expected.clone(),
        })?;
        if n < min {
            return Err(SpecError::OutOfRange {
                method: self.method,
                key,
                value: v.to_string(),
                expected,
            });
        }
        Ok(Some(n))
    }

    fn required_count(&self, key: &'static str, min: usize) -> Result<usize, SpecError> {
        self.count(key, min)?.ok_or_else(|| SpecError::MissingKey {
            method: self.method,
            key,
            expected: format!("a whole number >= {min}"),
        })
    }

    fn flag(&self, key: &'static str) -> Result<Option<bool>, SpecError> {
        match self.raw(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(SpecError::BadValue {
                method: self.method,
                key,
                value: v.to_string(),
                expected: "true or false".to_string(),
            }),
        }
    }

    fn ratio(&self, key: &'static str) -> Result<Option<Ratio>, SpecError> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        let expected = "a fraction in (0, 1] such as 1/8 or 0.125".to_string();
        let bad = || SpecError::BadNumber {
            method: self.method,
            key,
            value: v.to_string(),
            expected: expected.clone(),
        };
        let c = match v.split_once('/') {
            Some((a, b)) => {
                let a: f64 = a.trim().parse().map_err(|_| bad())?;
                let b: f64 = b.trim().parse().map_err(|_| bad())?;
                a / b
            }
            None => v.parse().map_err(|_| bad())?,
        };
        Ratio::new(c)
            .map(Some)
            .ok_or_else(|| SpecError::OutOfRange {
                method: self.method,
                key,
                value: v.to_string(),
                expected: expected.clone(),
            })
    }

    /// `l` (or another window) in `0..=k`, when given.
    fn window(&self, key: &'static str, k: Option<usize>) -> Result<Option<usize>, SpecError> {
        let l = self.count(key, 0)?;
        if let (Some(l), Some(k)) = (l, k) {
            if l > k {
                return Err(SpecError::OutOfRange {
                    method: self.method,
                    key,
                    value: l.to_string(),
                    expected: format!("a whole number in 0..={k} (at most k)"),
                });
            }
        }
        Ok(l)
    }
}

impl FromStr for MethodSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(SpecError::Empty);
        }
        let (name, rest) = match spec.split_once(':') {
            Some((n, r)) => (n.trim(), Some(r)),
            None => (spec, None),
        };
        let Some(info) = REGISTRY.iter().find(|m| m.name == name) else {
            return Err(SpecError::UnknownMethod {
                name: name.to_string(),
                known: known_methods(),
            });
        };
        let accepted: Vec<&str> = info.keys.iter().map(|(k, _)| *k).collect();
        let p = Params::parse(info.name, rest, &accepted)?;
        Ok(match info.name {
            "dense" => MethodSpec::Dense,
            "sparq" => {
                let budget = match p.ratio("ratio")? {
                    Some(c) => {
                        for key in ["r", "k"] {
                            if p.raw(key).is_some() {
                                return Err(SpecError::Conflict {
                                    method: "sparq",
                                    key: "ratio",
                                    other: key,
                                });
                            }
                        }
                        SparqBudget::Ratio(c)
                    }
                    None => {
                        let r = p.count("r", 1)?;
                        let k = p.count("k", 1)?;
                        let missing = |key| SpecError::MissingKey {
                            method: "sparq",
                            key,
                            expected: "a whole number >= 1, or give ratio=c instead of r and k"
                                .to_string(),
                        };
                        SparqBudget::Fixed {
                            r: r.ok_or_else(|| missing("r"))?,
                            k: k.ok_or_else(|| missing("k"))?,
                        }
                    }
                };
                let k = match budget {
                    SparqBudget::Fixed { k, .. } => Some(k),
                    SparqBudget::Ratio(_) => None,
                };
                let rank = match p.raw("rank") {
                    None => None,
                    Some("logits") => Some(Rank::Logits),
                    Some("probs") => Some(Rank::Probs),
                    Some(v) => {
                        return Err(SpecError::BadValue {
                            method: "sparq",
                            key: "rank",
                            value: v.to_string(),
                            expected: "logits or probs".to_string(),
                        })
                    }
                };
                MethodSpec::Sparq {
                    budget,
                    l: p.window("l", k)?,
                    realloc: p.flag("realloc")?,
                    rank,
                }
            }
            "h2o" => {
                let k = p.required_count("k", 1)?;
                MethodSpec::H2o {
                    k,
                    l: p.window("l", Some(k))?,
                }
            }
            "lminf" => {
                let k = p.required_count("k", 1)?;
                let sinks = p.count("sinks", 0)?;
                let s = sinks.unwrap_or(DEFAULT_SINKS);
                if s >= k {
                    // Blame the key the user wrote: sinks if given, else k (too small
                    // for the default sinks).
                    let (key, value) = if sinks.is_some() {
                        ("sinks", s)
                    } else {
                        ("k", k)
                    };
                    return Err(SpecError::OutOfRange {
                        method: "lminf",
                        key,
                        value: value.to_string(),
                        expected: format!(
                            "sinks < k so the window holds the current token \
                             (sinks = {s}, k = {k})"
                        ),
                    });
                }
                MethodSpec::LmInfinite { k, sinks }
            }
            "flexgen" => MethodSpec::FlexGen {
                k: p.required_count("k", 1)?,
            },
            "oracle" => MethodSpec::Oracle {
                k: p.required_count("k", 1)?,
            },
            other => unreachable!("registry method `{other}` has no parser"),
        })
    }
}

/// LM-Infinite's attention sinks when `sinks` is not given (SPEC section 3).
pub const DEFAULT_SINKS: usize = 16;

impl fmt::Display for MethodSpec {
    /// The canonical form: keys in a fixed order, only those that were given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MethodSpec::Dense => write!(f, "dense"),
            MethodSpec::Sparq {
                budget,
                l,
                realloc,
                rank,
            } => {
                match budget {
                    SparqBudget::Fixed { r, k } => write!(f, "sparq:r={r},k={k}")?,
                    SparqBudget::Ratio(c) => write!(f, "sparq:ratio={c}")?,
                }
                if let Some(l) = l {
                    write!(f, ",l={l}")?;
                }
                if let Some(x) = realloc {
                    write!(f, ",realloc={x}")?;
                }
                if let Some(x) = rank {
                    write!(f, ",rank={}", x.as_str())?;
                }
                Ok(())
            }
            MethodSpec::H2o { k, l } => {
                write!(f, "h2o:k={k}")?;
                l.map_or(Ok(()), |l| write!(f, ",l={l}"))
            }
            MethodSpec::LmInfinite { k, sinks } => {
                write!(f, "lminf:k={k}")?;
                sinks.map_or(Ok(()), |s| write!(f, ",sinks={s}"))
            }
            MethodSpec::FlexGen { k } => write!(f, "flexgen:k={k}"),
            MethodSpec::Oracle { k } => write!(f, "oracle:k={k}"),
        }
    }
}

impl MethodSpec {
    /// The method's name as in the registry.
    pub fn name(&self) -> &'static str {
        match self {
            MethodSpec::Dense => "dense",
            MethodSpec::Sparq { .. } => "sparq",
            MethodSpec::H2o { .. } => "h2o",
            MethodSpec::LmInfinite { .. } => "lminf",
            MethodSpec::FlexGen { .. } => "flexgen",
            MethodSpec::Oracle { .. } => "oracle",
        }
    }

    /// The checks that need the model: call before loading weights or data.
    pub fn validate(&self, shape: &ModelShape) -> Result<(), SpecError> {
        if shape.head_dim == 0 || shape.group == 0 {
            return Err(SpecError::BadShape {
                what: format!("head_dim = {}, group = {}", shape.head_dim, shape.group),
            });
        }
        if let MethodSpec::Sparq {
            budget: SparqBudget::Fixed { r, .. },
            ..
        } = self
        {
            if *r > shape.head_dim {
                return Err(SpecError::OutOfRange {
                    method: "sparq",
                    key: "r",
                    value: r.to_string(),
                    expected: format!(
                        "a whole number in 1..={} (the model's head dimension)",
                        shape.head_dim
                    ),
                });
            }
        }
        Ok(())
    }

    /// Every default filled in for `shape` and a prompt of `prompt_len` tokens (which
    /// only `sparq:ratio=` uses, for `k`). A window `l` given with a ratio is capped at
    /// the `k` the ratio yields, since it cannot be checked before the prompt is known.
    pub fn resolve(
        &self,
        shape: &ModelShape,
        prompt_len: usize,
    ) -> Result<MethodConfig, SpecError> {
        self.validate(shape)?;
        Ok(match *self {
            MethodSpec::Dense => MethodConfig::Dense(Dense),
            MethodSpec::Sparq {
                budget,
                l,
                realloc,
                rank,
            } => {
                let (r, k) = match budget {
                    SparqBudget::Fixed { r, k } => (r, k),
                    SparqBudget::Ratio(c) => {
                        transfer::equal_split(shape.head_dim, prompt_len, c.value())
                    }
                };
                MethodConfig::Sparq(Sparq {
                    r,
                    k,
                    l: l.map_or(k / 4, |l| l.min(k)),
                    // The paper turns reallocation off for its GQA models only.
                    realloc: realloc.unwrap_or(!shape.is_gqa()),
                    rank: rank.unwrap_or_default(),
                })
            }
            MethodSpec::H2o { k, l } => MethodConfig::H2o(H2o {
                k,
                l: l.unwrap_or(k / 4),
            }),
            MethodSpec::LmInfinite { k, sinks } => MethodConfig::LmInfinite(LmInfinite {
                k,
                sinks: sinks.unwrap_or(DEFAULT_SINKS),
            }),
            MethodSpec::FlexGen { k } => MethodConfig::FlexGen(FlexGen { k }),
            MethodSpec::Oracle { k } => MethodConfig::Oracle(Oracle { k }),
        })
    }

    /// The configured method for `shape` and a prompt of `prompt_len` tokens.
    pub fn build(
        &self,
        shape: &ModelShape,
        prompt_len: usize,
    ) -> Result<Box<dyn AttentionMethod>, SpecError> {
        Ok(self.resolve(shape, prompt_len)?.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MHA: ModelShape = ModelShape {
        head_dim: 128,
        group: 1,
        kv_heads: 32,
        layers: 32,
    };
    const GQA: ModelShape = ModelShape {
        head_dim: 128,
        group: 4,
        kv_heads: 8,
        layers: 32,
    };

    fn parse(s: &str) -> Result<MethodSpec, SpecError> {
        s.parse()
    }

    #[test]
    fn canonical_form_round_trips() {
        for (given, canonical) in [
            ("dense", "dense"),
            ("sparq:k=128,r=16", "sparq:r=16,k=128"),
            (
                " sparq: r = 16 , k=128, realloc=false , l=8",
                "sparq:r=16,k=128,l=8,realloc=false",
            ),
            ("sparq:r=16,k=128,rank=probs", "sparq:r=16,k=128,rank=probs"),
            ("sparq:ratio=1/8", "sparq:ratio=1/8"),
            ("sparq:ratio=0.125", "sparq:ratio=1/8"),
            (
                "sparq:ratio=0.3,realloc=true",
                "sparq:ratio=0.3,realloc=true",
            ),
            ("sparq:ratio=1", "sparq:ratio=1"),
            ("h2o:k=192", "h2o:k=192"),
            ("h2o:l=10,k=192", "h2o:k=192,l=10"),
            ("lminf:k=192,sinks=4", "lminf:k=192,sinks=4"),
            ("flexgen:k=128", "flexgen:k=128"),
            ("oracle:k=128", "oracle:k=128"),
        ] {
            let spec = parse(given).unwrap();
            assert_eq!(spec.to_string(), canonical, "{given}");
            assert_eq!(parse(canonical).unwrap(), spec, "{canonical}");
        }
    }

    #[test]
    fn refusals_name_method_key_and_range() {
        let cases = [
            ("", "empty"),
            ("sparse:k=1", "unknown attention method `sparse`"),
            ("sparq:r=16", "method `sparq` needs key `k`"),
            ("sparq:k=16", "method `sparq` needs key `r`"),
            (
                "sparq:r=16,k=0",
                "`k=0` is out of range; expected a whole number >= 1",
            ),
            ("sparq:r=0,k=8", "`r=0` is out of range"),
            ("sparq:r=x,k=8", "`r=x` is not a number"),
            (
                "sparq:r=16,k=128,l=200",
                "`l=200` is out of range; expected a whole number in 0..=128",
            ),
            (
                "sparq:r=16,k=128,q=1",
                "method `sparq` has no key `q`; it accepts: r, k, ratio, l, realloc, rank",
            ),
            (
                "sparq:r=16,k=128,realloc=yes",
                "`realloc=yes` is not accepted; expected true or false",
            ),
            ("sparq:r=16,k=128,rank=max", "expected logits or probs"),
            (
                "sparq:ratio=0",
                "`ratio=0` is out of range; expected a fraction in (0, 1]",
            ),
            ("sparq:ratio=3/2", "`ratio=3/2` is out of range"),
            ("sparq:ratio=1/x", "`ratio=1/x` is not a number"),
            (
                "sparq:ratio=1/8,k=4",
                "key `ratio` cannot be combined with `k`",
            ),
            ("sparq:r=1,r=2,k=3", "key `r` is given more than once"),
            ("sparq:r", "expected `key=value`, found `r`"),
            ("h2o", "method `h2o` needs key `k`"),
            ("h2o:k=-1", "`k=-1` is not a number"),
            (
                "lminf:k=10",
                "method `lminf`: `k=10` is out of range; expected sinks < k",
            ),
            ("lminf:k=10,sinks=10", "`sinks=10` is out of range"),
            (
                "dense:k=1",
                "method `dense` has no key `k`; it accepts: no keys",
            ),
            ("oracle:k=0", "method `oracle`: `k=0` is out of range"),
            ("flexgen:k=1.5", "method `flexgen`: `k=1.5` is not a number"),
        ];
        for (spec, want) in cases {
            let err = parse(spec).expect_err(spec).to_string();
            assert!(err.contains(want), "{spec}: `{err}` lacks `{want}`");
        }
        let err = parse("sparq:r=200,k=8")
            .unwrap()
            .validate(&MHA)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`r=200` is out of range; expected a whole number in 1..=128"),
            "{err}"
        );
        assert!(parse("sparq:r=128,k=8").unwrap().validate(&MHA).is_ok());
    }

    #[test]
    fn defaults_resolve_by_model_and_prompt() {
        let s = parse("sparq:r=16,k=128").unwrap();
        assert_eq!(
            s.resolve(&MHA, 1000).unwrap().describe(),
            "sparq:r=16,k=128,l=32,realloc=true"
        );
        assert_eq!(
            s.resolve(&GQA, 1000).unwrap().describe(),
            "sparq:r=16,k=128,l=32,realloc=false"
        );
        let s = parse("sparq:ratio=1/8,l=500,rank=probs").unwrap();
        assert_eq!(
            s.resolve(&GQA, 2048).unwrap().describe(),
            "sparq:r=16,k=128,l=128,realloc=false,rank=probs"
        );
        let s = parse("sparq:ratio=1/8").unwrap();
        let MethodConfig::Sparq(m) = s.resolve(&MHA, 3).unwrap() else {
            panic!()
        };
        assert_eq!((m.r, m.k, m.l), (16, 1, 0));
        assert_eq!(
            parse("h2o:k=192")
                .unwrap()
                .build(&MHA, 10)
                .unwrap()
                .describe(),
            "h2o:k=192,l=48"
        );
        assert_eq!(
            parse("lminf:k=192")
                .unwrap()
                .build(&MHA, 10)
                .unwrap()
                .describe(),
            "lminf:k=192,sinks=16"
        );
        assert!(parse("h2o:k=8")
            .unwrap()
            .build(&MHA, 10)
            .unwrap()
            .needs_prompt_mass());
        assert!(!parse("dense")
            .unwrap()
            .build(&MHA, 10)
            .unwrap()
            .needs_prompt_mass());
    }

    #[test]
    fn registry_lists_every_parsable_method() {
        for info in registry() {
            let spec = match info.name {
                "dense" => "dense".to_string(),
                "sparq" => "sparq:r=1,k=1".to_string(),
                name => format!("{name}:k=100"),
            };
            assert_eq!(parse(&spec).unwrap().name(), info.name);
            assert!(!info.paper.is_empty() && !info.description.is_empty());
        }
    }
}
