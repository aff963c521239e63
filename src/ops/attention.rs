//! `Attention`, wginfer's fused multi-head scaled dot-product attention (the
//! core of a BERT layer after the Q/K/V projections): per batch and head,
//! `softmax(q · kᵀ · scale) · v` over the keys the mask keeps.

use std::sync::Arc;

use rayon::prelude::*;

use super::{attr_i64, check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::linalg::{self, MatRef};
use crate::tensor::{Dim, Tensor, ValueType};

/// Multi-head attention on already-projected heads.
///
/// Inputs: `q [B, Sq, H·D]`, `k [B, Sk, H·D]`, `v [B, Sk, H·D]` (f32, the
/// heads side by side in the last axis, as a `Linear` produces them) and an
/// optional `mask [B, Sk]` (f32: non-zero keeps a key, 0 marks padding).
/// Output `[B, Sq, H·D]`: for each batch `b`, head `h` and query `i`,
/// `Σ_j p_ij · v[b, j, h]` with `p_i = softmax_j(q[b, i, h] · k[b, j, h] · scale)`
/// over the kept keys. A masked key gets weight exactly 0; a query whose keys
/// are all masked outputs zeros. `scale` defaults to `1 / sqrt(D)`.
#[derive(Clone, Debug)]
pub struct Attention {
    /// Number of heads `H`; the last axis is `H·D`.
    pub num_heads: usize,
    /// The score scale; `None` means `1 / sqrt(head_dim)`.
    pub scale: Option<f32>,
}

/// Concrete sizes of one call.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    /// Batch.
    pub batch: usize,
    /// Query positions.
    pub sq: usize,
    /// Key positions.
    pub sk: usize,
    /// Heads.
    pub heads: usize,
    /// Per-head width.
    pub head_dim: usize,
}

impl Attention {
    /// The scale applied to the scores for this head width.
    pub fn scale_for(&self, head_dim: usize) -> f32 {
        self.scale.unwrap_or_else(|| 1.0 / (head_dim.max(1) as f32).sqrt())
    }

    /// Checks concrete input shapes and returns the sizes.
    pub fn dims(&self, shapes: &[&[usize]]) -> Result<AttnDims, OpError> {
        check_arity(shapes.len(), 3, 4, "3 or 4 (q, k, v, optional mask)")?;
        let (q, k, v) = (shapes[0], shapes[1], shapes[2]);
        if q.len() != 3 || k.len() != 3 || v.len() != 3 {
            return Err(OpError::Shape(format!(
                "q, k and v must be [batch, seq, heads·head_dim]; got {q:?}, {k:?}, {v:?}"
            )));
        }
        if k != v || q[0] != k[0] || q[2] != k[2] {
            return Err(OpError::Shape(format!(
                "k and v must have one shape, and q the same batch and width: q {q:?}, k {k:?}, v {v:?}"
            )));
        }
        let heads = self.num_heads;
        if heads == 0 || !q[2].is_multiple_of(heads) {
            return Err(OpError::Shape(format!(
                "the width {} is not a multiple of num_heads = {heads}",
                q[2]
            )));
        }
        if let Some(m) = shapes.get(3) {
            if *m != [k[0], k[1]] {
                return Err(OpError::Shape(format!(
                    "mask is {m:?}; it must be [batch, key positions] = [{}, {}]",
                    k[0], k[1]
                )));
            }
        }
        Ok(AttnDims {
            batch: q[0],
            sq: q[1],
            sk: k[1],
            heads,
            head_dim: q[2] / heads,
        })
    }

    fn inputs<'a>(&self, inputs: &[&'a Tensor]) -> Result<AttnInputs<'a>, OpError> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        let d = self.dims(&shapes)?;
        let qkv = [f32_input(inputs, 0)?, f32_input(inputs, 1)?, f32_input(inputs, 2)?];
        let mask = if inputs.len() == 4 {
            Some(f32_input(inputs, 3)?)
        } else {
            None
        };
        Ok((d, qkv, mask))
    }
}

/// The output's base pointer, shared by the (batch, head) tasks, which write
/// disjoint blocks of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint elements (see `Attention::cpu`).
unsafe impl Send for OutPtr {}
// SAFETY: as for Send.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Sizes, `[q, k, v]` data and the optional mask of one call.
type AttnInputs<'a> = (AttnDims, [&'a [f32]; 3], Option<&'a [f32]>);

impl Op for Attention {
    fn op_type(&self) -> &'static str {
        "Attention"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("num_heads".into(), self.num_heads.into());
        if let Some(s) = self.scale {
            a.insert("scale".into(), (s as f64).into());
        }
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 3, 4, "3 or 4 (q, k, v, optional mask)")?;
        check_f32(inputs)?;
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        if q.rank() != 3 || k.rank() != 3 || v.rank() != 3 {
            return Err(OpError::Shape(format!(
                "q, k and v must be [batch, seq, heads·head_dim]; got {}, {}, {}",
                q.shape_string(),
                k.shape_string(),
                v.shape_string()
            )));
        }
        let clash = |a: &Dim, b: &Dim| matches!((a.known(), b.known()), (Some(x), Some(y)) if x != y);
        if clash(&q.shape[0], &k.shape[0])
            || clash(&q.shape[2], &k.shape[2])
            || (0..3).any(|i| clash(&k.shape[i], &v.shape[i]))
        {
            return Err(OpError::Shape(format!(
                "k and v must have one shape, and q the same batch and width: q {}, k {}, v {}",
                q.shape_string(),
                k.shape_string(),
                v.shape_string()
            )));
        }
        if let Some(w) = q.shape[2].known() {
            if self.num_heads == 0 || !w.is_multiple_of(self.num_heads) {
                return Err(OpError::Shape(format!(
                    "the width {w} is not a multiple of num_heads = {}",
                    self.num_heads
                )));
            }
        }
        if let Some(m) = inputs.get(3) {
            if m.rank() != 2 || clash(&m.shape[0], &k.shape[0]) || clash(&m.shape[1], &k.shape[1]) {
                return Err(OpError::Shape(format!(
                    "mask is {}; it must be [batch, key positions] = [{}, {}]",
                    m.shape_string(),
                    k.shape[0],
                    k.shape[1]
                )));
            }
        }
        Ok(vec![q.clone()])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (d, [q, k, v], mask) = self.inputs(inputs)?;
        let w = d.heads * d.head_dim;
        let scale = self.scale_for(d.head_dim) as f64;
        let mut y = vec![0.0f32; d.batch * d.sq * w];
        for b in 0..d.batch {
            let keep = |j: usize| mask.is_none_or(|m| m[b * d.sk + j] != 0.0);
            for h in 0..d.heads {
                for i in 0..d.sq {
                    let qi = &q[(b * d.sq + i) * w + h * d.head_dim..][..d.head_dim];
                    let scores: Vec<f64> = (0..d.sk)
                        .map(|j| {
                            let kj = &k[(b * d.sk + j) * w + h * d.head_dim..][..d.head_dim];
                            qi.iter().zip(kj).map(|(&a, &c)| a as f64 * c as f64).sum::<f64>() * scale
                        })
                        .collect();
                    let max = (0..d.sk)
                        .filter(|&j| keep(j))
                        .map(|j| scores[j])
                        .fold(f64::NEG_INFINITY, f64::max);
                    if max == f64::NEG_INFINITY {
                        continue; // every key masked: zeros
                    }
                    let p: Vec<f64> = (0..d.sk)
                        .map(|j| if keep(j) { (scores[j] - max).exp() } else { 0.0 })
                        .collect();
                    let sum: f64 = p.iter().sum();
                    for c in 0..d.head_dim {
                        let acc: f64 = (0..d.sk)
                            .map(|j| p[j] * v[(b * d.sk + j) * w + h * d.head_dim + c] as f64)
                            .sum();
                        y[(b * d.sq + i) * w + h * d.head_dim + c] = (acc / sum) as f32;
                    }
                }
            }
        }
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    /// Per (batch, head), in parallel when rayon has threads: scores `Q·Kᵀ`
    /// with one `sgemm` over strided views of the heads (no copies) into a
    /// scratch matrix reused across heads, a masked softmax per row (AVX-512
    /// where available), then `P·V` with a GEMM that writes the head's
    /// columns of the output in place.
    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (d, [q, k, v], mask) = self.inputs(inputs)?;
        let (w, hd) = (d.heads * d.head_dim, d.head_dim);
        let scale = self.scale_for(hd);
        let mut y = vec![0.0f32; d.batch * d.sq * w];
        if y.is_empty() || d.sk == 0 {
            return Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?]);
        }
        let out = OutPtr(y.as_mut_ptr());
        let head = |s: &mut Vec<f32>, bh: usize| -> Result<(), OpError> {
            let (b, h) = (bh / d.heads, bh % d.heads);
            let qv = MatRef {
                data: &q[b * d.sq * w + h * hd..],
                rows: d.sq,
                cols: hd,
                row_stride: w,
                col_stride: 1,
            };
            let kt = MatRef {
                data: &k[b * d.sk * w + h * hd..],
                rows: hd,
                cols: d.sk,
                row_stride: 1,
                col_stride: w,
            };
            s.resize(d.sq * d.sk, 0.0);
            linalg::sgemm(qv, kt, s, false)?;
            linalg::softmax::softmax_rows(s, d.sk, scale, mask.map(|m| &m[b * d.sk..(b + 1) * d.sk]));
            let vh = &v[b * d.sk * w + h * hd..];
            // The last element read of v and written of y, through the strides.
            let (v_last, y_last) = ((d.sk - 1) * w + hd - 1, (b * d.sq + d.sq - 1) * w + h * hd + hd - 1);
            if v_last >= vh.len() || y_last >= d.batch * d.sq * w {
                return Err(OpError::Shape("internal attention stride error".into()));
            }
            // SAFETY: `s` holds sq×sk scores; `vh` holds the sk×hd head
            // (checked above through its row stride w); the destination is
            // rows b·sq.. and columns h·hd.. of y (checked above), which no
            // other (batch, head) touches; y outlives the loop.
            unsafe {
                gemm::gemm(
                    d.sq,
                    hd,
                    d.sk,
                    out.get().add((b * d.sq) * w + h * hd),
                    1,
                    w as isize,
                    false,
                    s.as_ptr(),
                    1,
                    d.sk as isize,
                    vh.as_ptr(),
                    1,
                    w as isize,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            Ok(())
        };
        let n = d.batch * d.heads;
        if linalg::vecops::parallel(d.sq * d.sk * hd * n, 1 << 16) && n > 1 {
            (0..n).into_par_iter().try_for_each_init(Vec::new, head)?;
        } else {
            let mut s = Vec::new();
            for bh in 0..n {
                head(&mut s, bh)?;
            }
        }
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    /// Gradients of `q`, `k` and `v` (the mask has none). Per batch, head
    /// and query, with `p` the attention weights and `dO` the output's
    /// gradient: `dv_j += p_j·dO`, `ds_j = p_j·(dO·v_j − Σ_l p_l·dO·v_l)`,
    /// `dq = scale·Σ_j ds_j·k_j`, `dk_j += scale·ds_j·q`. Masked keys have
    /// `p_j = 0` and so no gradient; a fully masked query has none at all.
    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        let (d, [q, k, v], mask) = self.inputs(inputs)?;
        let dy = f32_input(grads, 0)?;
        let (w, hd) = (d.heads * d.head_dim, d.head_dim);
        if dy.len() != d.batch * d.sq * w {
            return Err(OpError::Shape(format!(
                "the output gradient has {} elements; the output has {}",
                dy.len(),
                d.batch * d.sq * w
            )));
        }
        let scale = self.scale_for(hd) as f64;
        let mut dq = vec![0.0f64; q.len()];
        let mut dk = vec![0.0f64; k.len()];
        let mut dv = vec![0.0f64; v.len()];
        for b in 0..d.batch {
            let keep = |j: usize| mask.is_none_or(|m| m[b * d.sk + j] != 0.0);
            for h in 0..d.heads {
                let kv = |j: usize| (b * d.sk + j) * w + h * hd;
                for i in 0..d.sq {
                    let qi = (b * d.sq + i) * w + h * hd;
                    let scores: Vec<f64> = (0..d.sk)
                        .map(|j| (0..hd).map(|c| q[qi + c] as f64 * k[kv(j) + c] as f64).sum::<f64>() * scale)
                        .collect();
                    let max = (0..d.sk)
                        .filter(|&j| keep(j))
                        .map(|j| scores[j])
                        .fold(f64::NEG_INFINITY, f64::max);
                    if max == f64::NEG_INFINITY {
                        continue;
                    }
                    let e: Vec<f64> = (0..d.sk)
                        .map(|j| if keep(j) { (scores[j] - max).exp() } else { 0.0 })
                        .collect();
                    let sum: f64 = e.iter().sum();
                    let p: Vec<f64> = e.iter().map(|x| x / sum).collect();
                    let dp: Vec<f64> = (0..d.sk)
                        .map(|j| (0..hd).map(|c| dy[qi + c] as f64 * v[kv(j) + c] as f64).sum())
                        .collect();
                    let dot: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for j in 0..d.sk {
                        if p[j] == 0.0 {
                            continue;
                        }
                        let ds = p[j] * (dp[j] - dot) * scale;
                        for c in 0..hd {
                            dv[kv(j) + c] += p[j] * dy[qi + c] as f64;
                            dq[qi + c] += ds * k[kv(j) + c] as f64;
                            dk[kv(j) + c] += ds * q[qi + c] as f64;
                        }
                    }
                }
            }
        }
        let out = |g: Vec<f64>, t: &Tensor| -> Result<Option<Tensor>, OpError> {
            Ok(Some(Tensor::from_vec(
                t.shape().to_vec(),
                g.into_iter().map(|x| x as f32).collect::<Vec<f32>>(),
            )?))
        };
        let mut grads = vec![out(dq, inputs[0])?, out(dk, inputs[1])?, out(dv, inputs[2])?];
        if inputs.len() == 4 {
            grads.push(None);
        }
        Ok(grads)
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        match self.dims(inputs) {
            Ok(d) => (4 * d.batch * d.heads * d.sq * d.sk * d.head_dim + 5 * d.batch * d.heads * d.sq * d.sk) as u64,
            Err(_) => 0,
        }
    }
}

/// A 0/1 mask with `valid[b]` leading ones per row (right padding), as a tokenizer pads.
fn padding_mask(batch: usize, seq: usize, valid: &[usize]) -> Tensor {
    let m: Vec<f32> = (0..batch * seq)
        .map(|i| if i % seq < valid[i / seq] { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_vec(vec![batch, seq], m).unwrap_or_else(|_| unreachable!("numel matches"))
}

fn case(rng: &mut CaseRng, b: usize, sq: usize, sk: usize, heads: usize, hd: usize, valid: Option<&[usize]>) -> OpCase {
    let w = heads * hd;
    let mut inputs = vec![
        rng.tensor(&[b, sq, w], -2.0, 2.0),
        rng.tensor(&[b, sk, w], -2.0, 2.0),
        rng.tensor(&[b, sk, w], -1.0, 1.0),
    ];
    let label = match valid {
        Some(v) => {
            inputs.push(padding_mask(b, sk, v));
            format!(" mask {v:?}")
        }
        None => String::new(),
    };
    OpCase::new(
        format!("attention b{b} sq{sq} sk{sk} {heads}x{hd}{label}"),
        Arc::new(Attention {
            num_heads: heads,
            scale: None,
        }),
        inputs,
    )
}

/// `Attention`: attributes `num_heads` (required), `scale` (default `1/sqrt(head_dim)`).
pub const ATTENTION: OpDef = OpDef {
    op_type: "Attention",
    build: |attrs: &Attrs| {
        let heads = attr_i64(attrs, "num_heads", None)?;
        if heads < 1 {
            return Err(OpError::Attribute {
                name: "num_heads".into(),
                message: format!("{heads}: must be at least 1"),
            });
        }
        let scale = match attrs.get("scale") {
            None => None,
            Some(v) => Some(v.as_f64().ok_or_else(|| OpError::Attribute {
                name: "scale".into(),
                message: format!("must be a number, got {v}"),
            })? as f32),
        };
        Ok(Arc::new(Attention {
            num_heads: heads as usize,
            scale,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(93);
        let mut cases = vec![
            case(&mut rng, 1, 1, 1, 1, 1, None),
            case(&mut rng, 2, 7, 7, 3, 5, Some(&[7, 3])),
            // MiniLM's shape: 12 heads of 32, a padded batch, one row fully masked.
            case(&mut rng, 3, 17, 17, 12, 32, Some(&[17, 5, 0])),
            case(&mut rng, 1, 3, 33, 2, 17, None),
        ];
        let mut scaled = case(&mut rng, 2, 5, 5, 4, 8, Some(&[2, 5]));
        scaled.op = Arc::new(Attention {
            num_heads: 4,
            scale: Some(0.25),
        });
        scaled.name.push_str(" scale 0.25");
        cases.push(scaled);
        cases
    },
    sample: |rng| {
        let (b, sq, sk) = (rng.range(1, 3), rng.dim(20), rng.dim(20));
        let (heads, hd) = (rng.range(1, 4), rng.dim(33));
        if rng.unit() < 0.6 {
            let valid: Vec<usize> = (0..b).map(|_| rng.range(0, sk)).collect();
            case(rng, b, sq, sk, heads, hd, Some(&valid))
        } else {
            case(rng, b, sq, sk, heads, hd, None)
        }
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape.to_vec(), v).unwrap()
    }

    #[test]
    fn two_keys_by_hand() {
        // One head of width 1, scale 1: scores q·k = [1, 0] -> softmax [e/(1+e), 1/(1+e)].
        let q = t(&[1, 1, 1], vec![1.0]);
        let k = t(&[1, 2, 1], vec![1.0, 0.0]);
        let v = t(&[1, 2, 1], vec![10.0, 20.0]);
        let op = Attention {
            num_heads: 1,
            scale: Some(1.0),
        };
        let e = std::f64::consts::E;
        let want = (10.0 * e + 20.0) / (1.0 + e);
        for y in [op.reference(&[&q, &k, &v]).unwrap(), op.cpu(&[&q, &k, &v]).unwrap()] {
            let y = y[0].as_f32().unwrap()[0] as f64;
            assert!((y - want).abs() < 1e-5, "{y} vs {want}");
        }
    }

    #[test]
    fn masked_keys_get_exactly_zero_weight_and_empty_rows_are_zero() {
        // Two heads of width 1; batch 0 keeps key 0 only, batch 1 keeps nothing.
        let q = t(&[2, 1, 2], vec![1.0, -1.0, 1.0, 1.0]);
        let k = t(&[2, 2, 2], vec![0.5, 0.5, 100.0, 100.0, 1.0, 1.0, 1.0, 1.0]);
        let v = t(&[2, 2, 2], vec![3.0, 4.0, 1e30, -1e30, 7.0, 8.0, 9.0, 10.0]);
        let m = t(&[2, 2], vec![1.0, 0.0, 0.0, 0.0]);
        let op = Attention {
            num_heads: 2,
            scale: None,
        };
        for y in [
            op.reference(&[&q, &k, &v, &m]).unwrap(),
            op.cpu(&[&q, &k, &v, &m]).unwrap(),
        ] {
            assert_eq!(y[0].shape(), &[2, 1, 2]);
            assert_eq!(y[0].as_f32().unwrap(), &[3.0, 4.0, 0.0, 0.0]);
        }
    }

    #[test]
    fn uniform_scores_average_the_values() {
        let q = t(&[1, 2, 4], vec![0.0; 8]);
        let k = t(&[1, 3, 4], (0..12).map(|i| i as f32).collect());
        let v = t(&[1, 3, 4], (0..12).map(|i| i as f32).collect());
        let op = Attention {
            num_heads: 2,
            scale: None,
        };
        let y = op.cpu(&[&q, &k, &v]).unwrap();
        // mean over the three keys of v: columns 4, 5, 6, 7 for both queries.
        for (g, w) in y[0]
            .as_f32()
            .unwrap()
            .iter()
            .zip([4.0, 5.0, 6.0, 7.0, 4.0, 5.0, 6.0, 7.0])
        {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn shape_errors() {
        let op = Attention {
            num_heads: 5,
            scale: None,
        };
        let x = ValueType::known(crate::tensor::DType::F32, &[2, 3, 12]);
        assert!(op.infer(&[x.clone(), x.clone(), x.clone()]).is_err());
        let a = t(&[1, 2, 4], vec![0.0; 8]);
        let bad_mask = t(&[1, 3], vec![1.0; 3]);
        let op = Attention {
            num_heads: 2,
            scale: None,
        };
        assert!(op.cpu(&[&a, &a, &a, &bad_mask]).is_err());
        let sym = ValueType {
            dtype: crate::tensor::DType::F32,
            shape: vec![Dim::Sym("batch".into()), Dim::Sym("seq".into()), Dim::Known(384)],
        };
        let mask = ValueType {
            dtype: crate::tensor::DType::F32,
            shape: vec![Dim::Sym("batch".into()), Dim::Sym("seq".into())],
        };
        let out = Attention {
            num_heads: 12,
            scale: None,
        }
        .infer(&[sym.clone(), sym.clone(), sym.clone(), mask])
        .unwrap();
        assert_eq!(out[0], sym);
    }
}
