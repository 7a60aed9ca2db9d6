//! Plain, obviously correct f64 versions of every method (loops over positions, sorts
//! instead of selections), written from SPEC sections 2 and 3, to check the fast ones.

use sparq_attention::{MethodConfig, Rank};

/// The cache as f64 rows, every position up to the current token.
pub struct Cache {
    pub keys: Vec<Vec<f64>>,
    pub values: Vec<Vec<f64>>,
}

impl Cache {
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

/// One reference decode step.
pub struct RefStep {
    /// `g` rows of `d`.
    pub out: Vec<Vec<f64>>,
    pub selected: Vec<usize>,
    pub alpha: Option<Vec<f64>>,
    /// Smallest gap, relative to the largest score, between what a ranking kept and
    /// what it dropped in this step (infinite when nothing was ranked). A fast f32
    /// implementation may legitimately choose differently below about 1e-5.
    pub margin: f64,
}

pub trait Reference {
    /// `q` holds the group's `g` query heads.
    fn step(&mut self, q: &[Vec<f64>], c: &Cache) -> RefStep;
}

pub fn reference_for(cfg: &MethodConfig, prompt_mass: &[f64]) -> Box<dyn Reference> {
    match *cfg {
        MethodConfig::Dense(_) => Box::new(DenseRef),
        MethodConfig::Sparq(m) => Box::new(SparqRef {
            r: m.r,
            k: m.k,
            l: m.l,
            realloc: m.realloc,
            rank: m.rank,
        }),
        MethodConfig::H2o(m) => Box::new(H2oRef {
            k: m.k,
            l: m.l,
            mass: prompt_mass.to_vec(),
            kept: vec![],
        }),
        MethodConfig::LmInfinite(m) => Box::new(LmInfRef {
            k: m.k,
            sinks: m.sinks,
        }),
        MethodConfig::FlexGen(m) => Box::new(FlexGenRef { k: m.k }),
        MethodConfig::Oracle(m) => Box::new(OracleRef { k: m.k }),
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// `q . K[p] / sqrt(d)` for every position `p` in `sel`.
fn logits(q: &[f64], c: &Cache, sel: &[usize]) -> Vec<f64> {
    let scale = 1.0 / (q.len() as f64).sqrt();
    sel.iter().map(|&p| dot(q, &c.keys[p]) * scale).collect()
}

/// `sum_j w[j] * V[sel[j]]`.
fn weighted_values(w: &[f64], c: &Cache, sel: &[usize]) -> Vec<f64> {
    let d = c.values[0].len();
    let mut y = vec![0.0; d];
    for (&wj, &p) in w.iter().zip(sel) {
        for (yi, v) in y.iter_mut().zip(&c.values[p]) {
            *yi += wj * v;
        }
    }
    y
}

/// Renormalised attention of one head over `sel`.
fn attend(q: &[f64], c: &Cache, sel: &[usize]) -> Vec<f64> {
    weighted_values(&softmax(&logits(q, c, sel)), c, sel)
}

/// The `k` largest of `(position, score)` pairs by a full sort (ties to the lower
/// position), ascending, with the relative margin of the cut.
fn top_k(scored: &[(usize, f64)], k: usize) -> (Vec<usize>, f64) {
    let mut v = scored.to_vec();
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    let margin = if k == 0 || k >= v.len() {
        f64::INFINITY
    } else {
        let top = v.iter().map(|x| x.1.abs()).fold(0.0, f64::max).max(1e-30);
        (v[k - 1].1 - v[k].1) / top
    };
    let mut sel: Vec<usize> = v.iter().take(k).map(|x| x.0).collect();
    sel.sort_unstable();
    (sel, margin)
}

fn all(c: &Cache) -> Vec<usize> {
    (0..c.len()).collect()
}

struct DenseRef;

impl Reference for DenseRef {
    fn step(&mut self, q: &[Vec<f64>], c: &Cache) -> RefStep {
        let sel = all(c);
        let out = q.iter().map(|qh| attend(qh, c, &sel)).collect();
        RefStep {
            out,
            selected: sel,
            alpha: None,
            margin: f64::INFINITY,
        }
    }
}

struct SparqRef {
    r: usize,
    k: usize,
    l: usize,
    realloc: bool,
    rank: Rank,
}

impl Reference for SparqRef {
    fn step(&mut self, q: &[Vec<f64>], c: &Cache) -> RefStep {
        let s = c.len();
        let d = q[0].len();
        if self.k + 1 >= s {
            let sel = all(c);
            let out = q.iter().map(|qh| attend(qh, c, &sel)).collect();
            return RefStep {
                out,
                selected: sel,
                alpha: Some(vec![1.0; q.len()]),
                margin: f64::INFINITY,
            };
        }
        // Step 1: the group's r largest |q| components.
        let absq: Vec<(usize, f64)> = (0..d)
            .map(|i| (i, q.iter().map(|qh| qh[i].abs()).sum()))
            .collect();
        let (i1, m1) = top_k(&absq, self.r);
        // Step 2: approximate logits and s_hat per head.
        let mut zhat = Vec::new();
        let mut shat = Vec::new();
        for qh in q {
            let num: f64 = i1.iter().map(|&i| qh[i].abs()).sum();
            let den: f64 = qh.iter().map(|x| x.abs()).sum();
            let z: Vec<f64> = (0..s)
                .map(|p| {
                    if num == 0.0 {
                        0.0
                    } else {
                        let tau = (d as f64 * num / den).sqrt();
                        i1.iter().map(|&i| qh[i] * c.keys[p][i]).sum::<f64>() / tau
                    }
                })
                .collect();
            shat.push(softmax(&z));
            zhat.push(z);
        }
        // Step 3: local window plus the best of the rest, ranked by the group sum.
        let window_start = s - 1 - self.l;
        let scored: Vec<(usize, f64)> = (0..window_start)
            .map(|p| {
                let v = match self.rank {
                    Rank::Logits => zhat.iter().map(|z| z[p]).sum(),
                    Rank::Probs => shat.iter().map(|sh| sh[p]).sum(),
                };
                (p, v)
            })
            .collect();
        let (mut sel, m2) = top_k(&scored, self.k - self.l);
        sel.extend(window_start..s);
        // Steps 4 to 6.
        let alpha: Vec<f64> = shat
            .iter()
            .map(|sh| sel.iter().map(|&p| sh[p]).sum())
            .collect();
        let v_mean: Vec<f64> = (0..d)
            .map(|i| c.values.iter().map(|v| v[i]).sum::<f64>() / s as f64)
            .collect();
        let out = q
            .iter()
            .zip(&alpha)
            .map(|(qh, &a)| {
                let y = attend(qh, c, &sel);
                if self.realloc {
                    y.iter()
                        .zip(&v_mean)
                        .map(|(y, m)| a * y + (1.0 - a) * m)
                        .collect()
                } else {
                    y
                }
            })
            .collect();
        RefStep {
            out,
            selected: sel,
            alpha: Some(alpha),
            margin: m1.min(m2),
        }
    }
}

struct H2oRef {
    k: usize,
    l: usize,
    mass: Vec<f64>,
    kept: Vec<bool>,
}

impl Reference for H2oRef {
    fn step(&mut self, q: &[Vec<f64>], c: &Cache) -> RefStep {
        let s = c.len();
        self.mass.resize(s, 0.0);
        self.kept.resize(s, true);
        let mut margin = f64::INFINITY;
        let kept_now = self.kept.iter().filter(|&&k| k).count();
        if kept_now > self.k + 1 {
            let window_start = s - 1 - self.l;
            let scored: Vec<(usize, f64)> = (0..window_start)
                .filter(|&p| self.kept[p])
                .map(|p| (p, self.mass[p]))
                .collect();
            let (keep, m) = top_k(&scored, self.k - self.l);
            margin = m;
            for (p, _) in scored {
                if !keep.contains(&p) {
                    self.kept[p] = false;
                }
            }
        }
        let sel: Vec<usize> = (0..s).filter(|&p| self.kept[p]).collect();
        let mut out = Vec::new();
        let mut added = vec![0.0; sel.len()];
        for qh in q {
            let w = softmax(&logits(qh, c, &sel));
            for (a, wj) in added.iter_mut().zip(&w) {
                *a += wj / q.len() as f64;
            }
            out.push(weighted_values(&w, c, &sel));
        }
        for (&p, a) in sel.iter().zip(added) {
            self.mass[p] += a;
        }
        RefStep {
            out,
            selected: sel,
            alpha: None,
            margin,
        }
    }
}

struct LmInfRef {
    k: usize,
    sinks: usize,
}

impl Reference for LmInfRef {
    fn step(&mut self, q: &[Vec<f64>], c: &Cache) -> RefStep {
        let s = c.len();
        let sel: Vec<usize> = if self.k >= s {
            all(c)
        } else {
            (0..s)
                .filter(|&p| p < self.sinks || p >= s - (self.k - self.sinks))
                .collect()
        };
        let out = q.iter().map(|qh| attend(qh, c, &sel)).collect();
        RefStep {
            out,
            selected: sel,
            alpha: None,
            margin: f64::INFINITY,
        }
    }
}

struct FlexGenRef {
    k: usize,
}

impl Reference for FlexGenRef {
    fn step(&mut self, q: &[Vec<f64>], c: &Cache) -> RefStep {
        let every = all(c);
        let w: Vec<Vec<f64>> = q.iter().map(|qh| softmax(&logits(qh, c, &every))).collect();
        let scored: Vec<(usize, f64)> = every
            .iter()
            .map(|&p| (p, w.iter().map(|wh| wh[p]).sum()))
            .collect();
        let (sel, margin) = top_k(&scored, self.k);
        let out = w
            .iter()
            .map(|wh| {
                let kept: Vec<f64> = sel.iter().map(|&p| wh[p]).collect();
                weighted_values(&kept, c, &sel)
            })
            .collect();
        RefStep {
            out,
            selected: sel,
            alpha: None,
            margin,
        }
    }
}

struct OracleRef {
    k: usize,
}

impl Reference for OracleRef {
    fn step(&mut self, q: &[Vec<f64>], c: &Cache) -> RefStep {
        let every = all(c);
        let z: Vec<Vec<f64>> = q.iter().map(|qh| logits(qh, c, &every)).collect();
        let scored: Vec<(usize, f64)> = every
            .iter()
            .map(|&p| (p, z.iter().map(|zh| zh[p]).sum()))
            .collect();
        let (sel, margin) = top_k(&scored, self.k);
        let out = q.iter().map(|qh| attend(qh, c, &sel)).collect();
        RefStep {
            out,
            selected: sel,
            alpha: None,
            margin,
        }
    }
}
