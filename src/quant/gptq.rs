//! GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for
//! Generative Pre-trained Transformers", 2022): weight-only quantization that
//! uses the layer's inputs. With `H = Σ x xᵀ` over calibration inputs, it
//! quantizes the columns (input features) of `W [out, in]` in order and
//! spreads each column's rounding error over the columns not yet quantized,
//! through the upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = Uᵀ U`):
//! `w[j] -= (w[i] − q[i]) / U[i,i] · U[i,j]` for `j > i`. That is the
//! optimal (OBS) update of the remaining weights for the error of
//! `‖X Wᵀ − X Ŵᵀ‖²`, so the layer's *outputs* on inputs like the
//! calibration set stay close, where round-to-nearest only keeps each weight
//! close. Updates inside a block of 128 columns are applied at once; the rest
//! of the row gets them lazily when the block ends (the paper's batching).
//!
//! By default columns go in order of decreasing `diag H` ([`GptqOptions::act_order`]).
//! The result is packed in the format's ordinary tensors — group parameters
//! are chosen with the same least-squares searches as plain quantization
//! ([`super::quantize_weight`]): from the original weights with `act_order`,
//! else from the error-updated weights when the group's first column is
//! reached — so every kernel runs it unchanged.
//! Supported: int4 blocks (symmetric and with a minimum), int8 symmetric and
//! W8A8 (per-channel scale). The algorithm runs over any [`Grid`] (group
//! parameters plus rounding, [`gptq_grid`]); [`super::gptq_ggml`] puts
//! ggml's block formats on it.

use half::f16;
use rayon::prelude::*;

use super::{int4_block_scale, int4_code, int4_min_block, int4_min_code, pack_nibbles, round, WeightFormat};
use crate::error::OpError;
use crate::tensor::{Storage, Tensor};

/// GPTQ settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqOptions {
    /// Dampening added to `H`'s diagonal, as a fraction of its mean diagonal
    /// (the paper's 1%), so that `H` is invertible and the updates stay small.
    pub damp: f64,
    /// Columns per lazy-update block.
    pub block: usize,
    /// Quantize columns in decreasing order of `H`'s diagonal (the inputs
    /// with the most energy first, while the most columns remain to absorb
    /// their error: the reference implementation's `act_order`). Group
    /// parameters are then chosen up front from the original weights
    /// ("static groups"), so groups stay contiguous in the packed format.
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            damp: 0.01,
            block: 128,
            act_order: true,
        }
    }
}

/// What GPTQ needs from a layer's calibration statistics: the column order
/// and the factor of `H⁻¹` in that order. One per distinct layer input (and
/// set of exact columns).
#[derive(Clone, Debug)]
pub struct Factor {
    /// `order[i]` is the original column quantized `i`-th.
    pub order: Vec<usize>,
    /// [`inverse_factor`] of `H` with rows and columns in `order`.
    pub u: Vec<f64>,
    /// The last `exact` entries of `order` (in increasing column order) are
    /// not quantized: they stay f32 outside the packed weight and absorb the
    /// error updates of every quantized column ([`quantize_weight_gptq_split`]).
    pub exact: usize,
}

impl Factor {
    /// The factor for `h` (`n × n`, row-major `Σ x xᵀ`) under `opts`.
    pub fn new(h: &[f64], n: usize, opts: &GptqOptions) -> Result<Self, OpError> {
        Self::with_exact(h, n, opts, &[])
    }

    /// The factor for `h` with the columns `exact` kept in f32: they go
    /// last, after the others (in `opts`' order), so the OBS updates of all
    /// the quantized columns land on them and nothing rounds them.
    pub fn with_exact(h: &[f64], n: usize, opts: &GptqOptions, exact: &[usize]) -> Result<Self, OpError> {
        if h.len() != n * n {
            return Err(OpError::Shape(format!("GPTQ: H has {} elements, not {n}x{n}", h.len())));
        }
        let mut is_exact = vec![false; n];
        for &c in exact {
            match is_exact.get_mut(c) {
                Some(e) if !*e => *e = true,
                _ => {
                    return Err(OpError::Shape(format!(
                        "GPTQ: exact column {c} is repeated or not below {n}"
                    )))
                }
            }
        }
        let mut order: Vec<usize> = (0..n).filter(|&c| !is_exact[c]).collect();
        if opts.act_order {
            order.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]).then(a.cmp(&b)));
        }
        order.extend((0..n).filter(|&c| is_exact[c]));
        let hp: Vec<f64> = (0..n * n).map(|i| h[order[i / n] * n + order[i % n]]).collect();
        Ok(Self {
            u: inverse_factor(&hp, n, opts.damp)?,
            order,
            exact: exact.len(),
        })
    }

    /// The columns kept in f32, in increasing order.
    pub fn exact_columns(&self) -> &[usize] {
        &self.order[self.order.len() - self.exact.min(self.order.len())..]
    }

    fn in_order(&self) -> bool {
        self.order.iter().enumerate().all(|(i, &c)| i == c)
    }
}

/// True for the formats [`quantize_weight_gptq`] handles.
pub fn supports(format: &WeightFormat) -> bool {
    matches!(
        format,
        WeightFormat::Int4 { .. } | WeightFormat::Int8 { affine: false } | WeightFormat::W8A8 { outliers: 0 }
    )
}

/// The upper Cholesky factor `U` of `(H + λI)⁻¹` (`(H + λI)⁻¹ = Uᵀ U`),
/// row-major `n × n`, for a symmetric positive semi-definite `h` (`n × n`,
/// row-major) with `λ = damp · mean(diag H)`. A zero diagonal entry (an input
/// the calibration set never drives) is set to 1 first, so that column is
/// rounded to nearest and passes no error on.
///
/// Computed without forming `H⁻¹`: with `P` the reversal permutation and
/// `P H P = L Lᵀ`, `H = R Rᵀ` for the upper triangular `R = P L P`, so
/// `H⁻¹ = R⁻ᵀ R⁻¹` and `U = R⁻¹ = P L⁻¹ P`.
pub fn inverse_factor(h: &[f64], n: usize, damp: f64) -> Result<Vec<f64>, OpError> {
    if h.len() != n * n {
        return Err(OpError::Shape(format!("GPTQ: H has {} elements, not {n}x{n}", h.len())));
    }
    let mut hr = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            hr[i * n + j] = h[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    for i in 0..n {
        if hr[i * n + i] <= 0.0 {
            hr[i * n + i] = 1.0;
        }
    }
    let mean = (0..n).map(|i| hr[i * n + i]).sum::<f64>() / n.max(1) as f64;
    for i in 0..n {
        hr[i * n + i] += damp * mean;
    }
    let l = cholesky(&hr, n)?;
    let linv = lower_inverse(&l, n);
    let mut u = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = linv[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    Ok(u)
}

/// `Σ a_i·b_i` with four partial sums (so the loop vectorizes).
fn dot64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ac, bc) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for t in 0..4 {
            acc[t] += x[t] * y[t];
        }
    }
    acc[0] + acc[1] + acc[2] + acc[3] + tail
}

/// Lower Cholesky factor of a symmetric positive definite `a` (column by
/// column; the rows below each column in parallel).
fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>, OpError> {
    let mut l = vec![0.0f64; n * n];
    for j in 0..n {
        let (top, bottom) = l.split_at_mut((j + 1) * n);
        let lj = &mut top[j * n..(j + 1) * n];
        let d = a[j * n + j] - dot64(&lj[..j], &lj[..j]);
        if d.is_nan() || d <= 0.0 {
            return Err(OpError::Shape(format!(
                "GPTQ: the calibration second-moment matrix is not positive definite at column {j}; raise the dampening"
            )));
        }
        let d = d.sqrt();
        lj[j] = d;
        let lj = &lj[..j];
        let work = |(r, row): (usize, &mut [f64])| {
            let i = j + 1 + r;
            row[j] = (a[i * n + j] - dot64(&row[..j], lj)) / d;
        };
        if (n - j) * j >= 1 << 14 {
            bottom.par_chunks_mut(n).enumerate().for_each(work);
        } else {
            bottom.chunks_mut(n).enumerate().for_each(work);
        }
    }
    Ok(l)
}

/// The inverse of a lower triangular `l` with a positive diagonal (forward
/// substitution per column, columns in parallel).
fn lower_inverse(l: &[f64], n: usize) -> Vec<f64> {
    let cols: Vec<Vec<f64>> = (0..n)
        .into_par_iter()
        .map(|j| {
            // x[i - j] for i >= j: L x = e_j.
            let mut x = vec![0.0f64; n - j];
            for i in j..n {
                let rhs = if i == j { 1.0 } else { 0.0 };
                let s = dot64(&l[i * n + j..i * n + i], &x[..i - j]);
                x[i - j] = (rhs - s) / l[i * n + i];
            }
            x
        })
        .collect();
    let mut inv = vec![0.0f64; n * n];
    for (j, col) in cols.iter().enumerate() {
        for (t, &v) in col.iter().enumerate() {
            inv[(j + t) * n + j] = v;
        }
    }
    inv
}

/// How one group of one row is quantized: parameters chosen from the
/// group's values, and the nearest representable value with its code. GPTQ
/// ([`gptq_grid`]) runs over any grid; [`super::gptq_ggml`] has ggml's
/// block formats.
pub trait Grid: Sync {
    /// A group's parameters (scales, minimums; whatever packing needs).
    type Params: Copy + Default + Send + Sync;
    /// Columns per group.
    fn group(&self) -> usize;
    /// Parameters for a group's values (`vals.len() == group()` except in a
    /// row's last, short group).
    fn fit(&self, vals: &[f32]) -> Self::Params;
    /// The representable value nearest `x` at position `at` of its group
    /// (`0..group()`) under `p`, and its code.
    fn nearest(&self, x: f32, p: &Self::Params, at: usize) -> (f32, i32);
    /// What an exact (f32-kept) column contributes to its group's parameter
    /// fit, given the group's other values: a value that does not widen the
    /// grid.
    fn neutral(&self, _others: &[f32]) -> f32 {
        0.0
    }
}

struct Int4Grid {
    block: usize,
    with_min: bool,
}

impl Grid for Int4Grid {
    type Params = (f32, f32);
    fn group(&self) -> usize {
        self.block
    }
    fn fit(&self, vals: &[f32]) -> (f32, f32) {
        if self.with_min {
            let (s, m) = int4_min_block(vals);
            (s.to_f32(), m.to_f32())
        } else {
            (int4_block_scale(vals).to_f32(), 0.0)
        }
    }
    fn nearest(&self, x: f32, &(s, m): &(f32, f32), _: usize) -> (f32, i32) {
        if self.with_min {
            let c = int4_min_code(x, s, m);
            (c as f32 * s + m, i32::from(c))
        } else {
            let c = int4_code(x, s);
            (c * s, c as i32)
        }
    }
    fn neutral(&self, others: &[f32]) -> f32 {
        if self.with_min && !others.is_empty() {
            others.iter().sum::<f32>() / others.len() as f32
        } else {
            0.0
        }
    }
}

/// Symmetric int8 per output channel: one group per row, scale max|w|/127
/// from the row as it is before any update (the first column starts it).
struct Int8Grid {
    inp: usize,
}

impl Grid for Int8Grid {
    type Params = (f32, f32);
    fn group(&self) -> usize {
        self.inp.max(1)
    }
    fn fit(&self, vals: &[f32]) -> (f32, f32) {
        let max = vals.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        (if max > 0.0 { max / 127.0 } else { 1.0 }, 0.0)
    }
    fn nearest(&self, x: f32, &(s, _): &(f32, f32), _: usize) -> (f32, i32) {
        let c = round(x / s).clamp(-127.0, 127.0);
        (c * s, c as i32)
    }
}

/// What GPTQ chose on a [`Grid`]: the quantized values (`[out, in]`, each
/// exactly representable) and their codes, the parameters of every group
/// (`[out, groups]`, groups of [`Grid::group`] columns) and the f32
/// remainders of the exact columns (`[out, exact]`, columns as
/// [`Factor::exact_columns`]): the weight is `q` plus `kept` in those columns.
#[derive(Clone, Debug)]
pub struct Quantized<P> {
    /// The quantized weight, `[out, in]`.
    pub q: Vec<f32>,
    /// The code of every value ([`Grid::nearest`]'s), `[out, in]`.
    pub codes: Vec<i32>,
    /// Each group's parameters, `[out, groups]`.
    pub params: Vec<P>,
    /// The exact columns' f32 remainders, `[out, exact]`.
    pub kept: Vec<f32>,
}

/// Rows per parallel task: they share each read of `U`'s rows.
const ROWS_PER_TASK: usize = 8;

/// GPTQ of an f32 `[out, in]` weight onto `grid`, given the [`Factor`] of
/// its input statistics: columns in the factor's order, each rounded with
/// [`Grid::nearest`] and its error spread over the columns not yet
/// quantized. Group parameters are fitted when a group's first column is
/// reached (from the error-updated weights) when the factor keeps the
/// columns in order, else up front from the original weights.
pub fn gptq_grid<G: Grid>(
    grid: &G,
    w: &[f32],
    out: usize,
    inp: usize,
    factor: &Factor,
    opts: &GptqOptions,
) -> Result<Quantized<G::Params>, OpError> {
    if w.len() != out * inp || factor.u.len() != inp * inp || factor.order.len() != inp || grid.group() == 0 {
        return Err(OpError::Shape(format!(
            "GPTQ: weight has {} elements (want {out}x{inp}), factor {} (want {inp}x{inp})",
            w.len(),
            factor.u.len()
        )));
    }
    Ok(run(w, out, inp, factor, grid, opts))
}

fn run<G: Grid>(w: &[f32], out: usize, inp: usize, f: &Factor, grid: &G, opts: &GptqOptions) -> Quantized<G::Params> {
    let g = grid.group();
    let groups = inp.div_ceil(g);
    let bs = opts.block.max(1);
    let order = &f.order;
    // Out of order (or with exact columns): group parameters fixed up front
    // from the original weights.
    let fixed = !f.in_order() || f.exact > 0;
    let ne = f.exact.min(inp);
    let exact_from = inp - ne;
    let mut is_exact = vec![false; inp];
    for &c in f.exact_columns() {
        is_exact[c] = true;
    }
    // f32 copy of U for the update loops (they vectorize at twice the width).
    let uf: Vec<f32> = f.u.iter().map(|&v| v as f32).collect();
    let mut q = vec![0.0f32; out * inp];
    let mut codes = vec![0i32; out * inp];
    let mut params = vec![G::Params::default(); out * groups];
    // (One column's room per row without exact columns, so the chunks pair up.)
    let mut kept = vec![0.0f32; out * ne.max(1)];
    q.par_chunks_mut(ROWS_PER_TASK * inp.max(1))
        .zip(codes.par_chunks_mut(ROWS_PER_TASK * inp.max(1)))
        .zip(params.par_chunks_mut(ROWS_PER_TASK * groups.max(1)))
        .zip(kept.par_chunks_mut(ROWS_PER_TASK * ne.max(1)))
        .enumerate()
        .for_each(|(t, (((qc, cc), pc), kc))| {
            let r0 = t * ROWS_PER_TASK;
            let rows = qc.len() / inp.max(1);
            // The rows' weights, columns in processing order.
            let mut wl: Vec<f32> = (0..rows * inp)
                .map(|i| w[(r0 + i / inp) * inp + order[i % inp]])
                .collect();
            if fixed {
                let mut vals = Vec::with_capacity(g);
                let mut others = Vec::with_capacity(g);
                for r in 0..rows {
                    let row = &w[(r0 + r) * inp..(r0 + r + 1) * inp];
                    for b in 0..groups {
                        let cols = b * g..((b + 1) * g).min(inp);
                        if ne == 0 {
                            pc[r * groups + b] = grid.fit(&row[cols]);
                            continue;
                        }
                        others.clear();
                        others.extend(cols.clone().filter(|&c| !is_exact[c]).map(|c| row[c]));
                        let fill = grid.neutral(&others);
                        vals.clear();
                        vals.extend(cols.map(|c| if is_exact[c] { fill } else { row[c] }));
                        pc[r * groups + b] = grid.fit(&vals);
                    }
                }
            }
            let mut err = vec![0.0f32; rows * bs];
            for i1 in (0..inp).step_by(bs) {
                let i2 = (i1 + bs).min(inp);
                for i in i1..i2 {
                    let c = order[i];
                    let d = uf[i * inp + i];
                    let urow = &uf[i * inp + i + 1..i * inp + i2];
                    for r in 0..rows {
                        let row = &mut wl[r * inp..(r + 1) * inp];
                        if !fixed && i % g == 0 {
                            pc[r * groups + i / g] = grid.fit(&row[i..(i + g).min(inp)]);
                        }
                        let p = &pc[r * groups + c / g];
                        let x = row[i];
                        if i >= exact_from {
                            // Kept: a representable value in the packed
                            // weight (0 where the grid has it), the rest in f32.
                            let (qv, code) = grid.nearest(0.0, p, c % g);
                            (qc[r * inp + c], cc[r * inp + c]) = (qv, code);
                            kc[r * ne + i - exact_from] = x - qv;
                            err[r * bs + i - i1] = 0.0;
                            continue;
                        }
                        let (qv, code) = grid.nearest(x, p, c % g);
                        (qc[r * inp + c], cc[r * inp + c]) = (qv, code);
                        let e = (x - qv) / d;
                        err[r * bs + i - i1] = e;
                        for (wv, &uv) in row[i + 1..i2].iter_mut().zip(urow) {
                            *wv -= e * uv;
                        }
                    }
                }
                // The block's errors reach the rest of each row at once.
                for r in 0..rows {
                    let row = &mut wl[r * inp..(r + 1) * inp];
                    for c in 0..i2 - i1 {
                        let e = err[r * bs + c];
                        if e == 0.0 {
                            continue;
                        }
                        let i = i1 + c;
                        for (wv, &uv) in row[i2..].iter_mut().zip(&uf[i * inp + i2..(i + 1) * inp]) {
                            *wv -= e * uv;
                        }
                    }
                }
            }
        });
    kept.truncate(out * ne);
    Quantized { q, codes, params, kept }
}

/// GPTQ-quantizes an f32 `[out, in]` weight given the [`Factor`] of its
/// input statistics and packs it into `format`'s tensors (the same layout
/// [`super::quantize_weight`] writes). The factor must have no exact
/// columns (see [`quantize_weight_gptq_split`]).
pub fn quantize_weight_gptq(
    format: &WeightFormat,
    w: &[f32],
    out: usize,
    inp: usize,
    factor: &Factor,
    opts: &GptqOptions,
) -> Result<Vec<Tensor>, OpError> {
    if factor.exact > 0 {
        return Err(OpError::Shape(format!(
            "GPTQ: the factor keeps {} columns in f32; use quantize_weight_gptq_split",
            factor.exact
        )));
    }
    quantize_weight_gptq_split(format, w, out, inp, factor, opts).map(|(t, _)| t)
}

/// [`quantize_weight_gptq`] with the factor's exact columns
/// ([`Factor::with_exact`]) split off: the packed tensors hold a
/// representable value there (0 in the symmetric formats), and the second
/// result, `[out, exact]` row-major with columns [`Factor::exact_columns`],
/// the f32 rest — the layer's weight is the dequantized packed weight plus
/// those columns. The exact columns absorb the error updates of all the
/// others, so the split layer is at least as close on the calibration
/// inputs as one with those columns left at their original values.
pub fn quantize_weight_gptq_split(
    format: &WeightFormat,
    w: &[f32],
    out: usize,
    inp: usize,
    factor: &Factor,
    opts: &GptqOptions,
) -> Result<(Vec<Tensor>, Vec<f32>), OpError> {
    format.validate()?;
    let u = &factor.u;
    if w.len() != out * inp || u.len() != inp * inp || factor.order.len() != inp {
        return Err(OpError::Shape(format!(
            "GPTQ: weight has {} elements (want {out}x{inp}), factor {} (want {inp}x{inp})",
            w.len(),
            u.len()
        )));
    }
    let t = |shape: Vec<usize>, v: Storage| Tensor::new(shape, v).map_err(OpError::from);
    match *format {
        WeightFormat::Int4 { block, with_min } => {
            let block = block as usize;
            let res = run(w, out, inp, factor, &Int4Grid { block, with_min }, opts);
            let blocks = inp.div_ceil(block);
            let padded = blocks * block;
            let mut nibbles = Vec::with_capacity(out * padded);
            let (mut scales, mut mins) = (Vec::with_capacity(out * blocks), Vec::new());
            for r in 0..out {
                for b in 0..blocks {
                    let (s, m) = res.params[r * blocks + b];
                    let vals = &res.q[r * inp + b * block..r * inp + ((b + 1) * block).min(inp)];
                    // The values are exact grid points: dividing back gives their codes.
                    if with_min {
                        nibbles.extend(vals.iter().map(|&x| int4_min_code(x, s, m)));
                        mins.push(f16::from_f32(m));
                    } else {
                        nibbles.extend(vals.iter().map(|&x| (int4_code(x, s) + 8.0) as u8));
                    }
                    scales.push(f16::from_f32(s));
                    let pad = block - vals.len();
                    nibbles.extend(std::iter::repeat_n(if with_min { 0 } else { 8 }, pad));
                }
            }
            let mut v = vec![
                t(vec![out, padded / 2], Storage::U8(pack_nibbles(&nibbles)))?,
                t(vec![out, blocks], Storage::F16(scales))?,
            ];
            if with_min {
                v.push(t(vec![out, blocks], Storage::F16(mins))?);
            }
            Ok((v, res.kept))
        }
        WeightFormat::Int8 { affine: false } | WeightFormat::W8A8 { outliers: 0 } => {
            let res = run(w, out, inp, factor, &Int8Grid { inp }, opts);
            let scales: Vec<f32> = (0..out).map(|r| res.params.get(r).map_or(1.0, |p| p.0)).collect();
            let q: Vec<i8> = res
                .q
                .iter()
                .enumerate()
                .map(|(i, &x)| round(x / scales[i / inp.max(1)]).clamp(-127.0, 127.0) as i8)
                .collect();
            if matches!(format, WeightFormat::W8A8 { .. }) {
                return Ok((super::w8a8_tensors(q, scales, w, out, inp, &[])?, res.kept));
            }
            Ok((
                vec![t(vec![out, inp], Storage::I8(q))?, t(vec![out], Storage::F32(scales))?],
                res.kept,
            ))
        }
        _ => Err(OpError::Attribute {
            name: "format".into(),
            message: format!("GPTQ supports int4, int4-min, int8 and w8a8, not {format}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, quantize_weight};

    /// A small deterministic generator (xorshift), uniform in [lo, hi).
    struct Rng(u64);

    impl Rng {
        fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    self.0 ^= self.0 << 13;
                    self.0 ^= self.0 >> 7;
                    self.0 ^= self.0 << 17;
                    lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
                })
                .collect()
        }
    }

    /// `X [n, k]` with correlated columns (a random mixing of fewer sources
    /// plus noise, like real activations), `W [out, k]`, and `H = XᵀX`.
    fn problem(seed: u64, n: usize, k: usize, out: usize) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let z = rng.vec(n * (k / 4), -1.0, 1.0);
        let a = rng.vec(k / 4 * k, -1.0, 1.0);
        let noise = rng.vec(n * k, -0.1, 0.1);
        let mut x = noise;
        for i in 0..n {
            for s in 0..k / 4 {
                for j in 0..k {
                    x[i * k + j] += z[i * (k / 4) + s] * a[s * k + j];
                }
            }
        }
        let w = rng.vec(out * k, -1.0, 1.0);
        let mut h = vec![0.0f64; k * k];
        for i in 0..n {
            for p in 0..k {
                for q in 0..k {
                    h[p * k + q] += x[i * k + p] as f64 * x[i * k + q] as f64;
                }
            }
        }
        (x, w, h)
    }

    /// ‖X Wᵀ − X Ŵᵀ‖² computed directly.
    fn output_error(x: &[f32], w: &[f32], wq: &[f32], k: usize) -> f64 {
        let out = w.len() / k;
        let mut e = 0.0f64;
        for xr in x.chunks(k) {
            for j in 0..out {
                let d: f64 = (0..k)
                    .map(|p| xr[p] as f64 * (w[j * k + p] - wq[j * k + p]) as f64)
                    .sum();
                e += d * d;
            }
        }
        e
    }

    #[test]
    fn inverse_factor_times_h_is_identity() {
        let k = 40;
        let (_, _, h) = problem(1, 200, k, 1);
        let u = inverse_factor(&h, k, 0.0).expect("factor");
        for i in 0..k {
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0, "upper triangular");
            }
            assert!(u[i * k + i] > 0.0);
        }
        // Uᵀ U H = I.
        let mut m = vec![0.0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                m[i * k + j] = (0..k).map(|t| u[t * k + i] * u[t * k + j]).sum();
            }
        }
        for i in 0..k {
            for j in 0..k {
                let v: f64 = (0..k).map(|t| m[i * k + t] * h[t * k + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-6, "(UᵀU·H)[{i},{j}] = {v}");
            }
        }
    }

    #[test]
    fn gptq_beats_round_to_nearest_on_layer_outputs() {
        let (n, k, out) = (512, 256, 24);
        for (seed, format) in [
            (
                2,
                WeightFormat::Int4 {
                    block: 32,
                    with_min: false,
                },
            ),
            (
                3,
                WeightFormat::Int4 {
                    block: 32,
                    with_min: true,
                },
            ),
            (
                4,
                WeightFormat::Int4 {
                    block: 128,
                    with_min: false,
                },
            ),
            (5, WeightFormat::Int8 { affine: false }),
            (6, WeightFormat::W8A8 { outliers: 0 }),
        ] {
            let (x, w, h) = problem(seed, n, k, out);
            let rtn = quantize_weight(&format, &w, out, k).expect("rtn");
            let refs: Vec<&Tensor> = rtn.iter().collect();
            let rq = dequantize(&format, &refs, out, k).expect("dequantize");
            let er = output_error(&x, &w, &rq, k);
            for act_order in [false, true] {
                let opts = GptqOptions {
                    act_order,
                    ..Default::default()
                };
                let f = Factor::new(&h, k, &opts).expect("factor");
                let packed = quantize_weight_gptq(&format, &w, out, k, &f, &opts).expect("gptq");
                let refs: Vec<&Tensor> = packed.iter().collect();
                let gq = dequantize(&format, &refs, out, k).expect("dequantize");
                let eg = output_error(&x, &w, &gq, k);
                eprintln!(
                    "{format} act_order {act_order}: output error GPTQ {eg:.4e}, round-to-nearest {er:.4e} ({:.2}x)",
                    er / eg
                );
                assert!(eg < 0.7 * er, "{format}: GPTQ {eg} vs round-to-nearest {er}");
            }
        }
    }

    #[test]
    fn uncorrelated_inputs_give_round_to_nearest() {
        // H diagonal: no error feedback, so GPTQ packs what plain quantization does.
        let (out, k) = (6, 96);
        let w = Rng(7).vec(out * k, -1.0, 1.0);
        let mut h = vec![0.0f64; k * k];
        for i in 0..k {
            h[i * k + i] = 1.0 + i as f64;
        }
        for act_order in [false, true] {
            let opts = GptqOptions {
                act_order,
                ..Default::default()
            };
            let f = Factor::new(&h, k, &opts).expect("factor");
            assert_eq!(f.in_order(), !act_order, "the diagonal grows, so act_order reverses");
            for format in [
                WeightFormat::Int4 {
                    block: 32,
                    with_min: false,
                },
                WeightFormat::Int4 {
                    block: 64,
                    with_min: true,
                },
                WeightFormat::Int8 { affine: false },
            ] {
                let a = quantize_weight_gptq(&format, &w, out, k, &f, &opts).expect("gptq");
                let b = quantize_weight(&format, &w, out, k).expect("rtn");
                assert_eq!(a, b, "{format} act_order {act_order}");
            }
        }
    }

    /// The f32 weight a split result stands for: the dequantized packed
    /// tensors plus the kept columns.
    fn split_weight(
        format: &WeightFormat,
        packed: &[Tensor],
        kept: &[f32],
        cols: &[usize],
        out: usize,
        k: usize,
    ) -> Vec<f32> {
        let refs: Vec<&Tensor> = packed.iter().collect();
        let mut wq = dequantize(format, &refs, out, k).expect("dequantize");
        for r in 0..out {
            for (t, &c) in cols.iter().enumerate() {
                wq[r * k + c] += kept[r * cols.len() + t];
            }
        }
        wq
    }

    #[test]
    fn exact_columns_with_uncorrelated_inputs() {
        // Diagonal H: no error feedback. The exact columns come back exactly
        // (packed 0 in the symmetric format) and the others are what plain
        // quantization packs for the weight with the exact columns replaced
        // by a neutral value (0; int4-min: the mean of the block's others).
        let (out, k) = (5, 64);
        let w = Rng(11).vec(out * k, -1.0, 1.0);
        let mut h = vec![0.0f64; k * k];
        for i in 0..k {
            h[i * k + i] = 1.0 + (i % 7) as f64;
        }
        let cols = [3usize, 17, 40, 41];
        let opts = GptqOptions::default();
        let f = Factor::with_exact(&h, k, &opts, &[41, 3, 40, 17]).expect("factor");
        assert_eq!(f.exact_columns(), &cols);
        assert_eq!(f.order.len(), k);
        for with_min in [false, true] {
            let format = WeightFormat::Int4 { block: 32, with_min };
            let (packed, kept) = quantize_weight_gptq_split(&format, &w, out, k, &f, &opts).expect("gptq");
            assert_eq!(kept.len(), out * cols.len());
            let mut neutral = w.clone();
            for r in 0..out {
                for &c in &cols {
                    let b = c / 32 * 32;
                    let others: Vec<f32> = (b..b + 32)
                        .filter(|j| !cols.contains(j))
                        .map(|j| w[r * k + j])
                        .collect();
                    neutral[r * k + c] = if with_min {
                        others.iter().sum::<f32>() / others.len() as f32
                    } else {
                        0.0
                    };
                }
            }
            let rtn = quantize_weight(&format, &neutral, out, k).expect("rtn");
            let rq = dequantize(&format, &rtn.iter().collect::<Vec<_>>(), out, k).expect("dequantize");
            let refs: Vec<&Tensor> = packed.iter().collect();
            let gq = dequantize(&format, &refs, out, k).expect("dequantize");
            let whole = split_weight(&format, &packed, &kept, &cols, out, k);
            for r in 0..out {
                for c in 0..k {
                    let i = r * k + c;
                    if cols.contains(&c) {
                        if !with_min {
                            assert_eq!(gq[i], 0.0, "{format}: packed exact column {c}");
                        }
                        assert!(
                            (whole[i] - w[i]).abs() <= 1e-6,
                            "{format}: [{r},{c}] {} vs {}",
                            whole[i],
                            w[i]
                        );
                    } else {
                        assert_eq!(gq[i], rq[i], "{format}: [{r},{c}]");
                    }
                }
            }
        }
        assert!(quantize_weight_gptq(
            &WeightFormat::Int4 {
                block: 32,
                with_min: false
            },
            &w,
            out,
            k,
            &f,
            &opts
        )
        .is_err());
        assert!(Factor::with_exact(&h, k, &opts, &[3, 3]).is_err());
        assert!(Factor::with_exact(&h, k, &opts, &[k]).is_err());
    }

    #[test]
    fn exact_columns_absorb_the_error() {
        // Correlated inputs: keeping the columns with the most energy in f32
        // and letting them absorb the others' updates beats both plain GPTQ
        // and keeping those columns at their original values.
        let (n, k, out) = (512, 128, 16);
        let (x, mut w, h) = problem(21, n, k, out);
        let cols = [5usize, 50, 77, 100];
        // Large inputs on the kept channels (as in a transformer's outlier
        // features), so that the choice matters.
        let mut x = x;
        let mut h = h;
        for row in x.chunks_mut(k) {
            for &c in &cols {
                row[c] *= 8.0;
            }
        }
        for v in h.iter_mut() {
            *v = 0.0;
        }
        for row in x.chunks(k) {
            for p in 0..k {
                for q in 0..k {
                    h[p * k + q] += row[p] as f64 * row[q] as f64;
                }
            }
        }
        w.iter_mut().for_each(|v| *v *= 0.5);
        let opts = GptqOptions::default();
        let format = WeightFormat::Int4 {
            block: 32,
            with_min: false,
        };
        let plain =
            quantize_weight_gptq(&format, &w, out, k, &Factor::new(&h, k, &opts).expect("f"), &opts).expect("gptq");
        let pq = dequantize(&format, &plain.iter().collect::<Vec<_>>(), out, k).expect("dequantize");
        let f = Factor::with_exact(&h, k, &opts, &cols).expect("factor");
        let (packed, kept) = quantize_weight_gptq_split(&format, &w, out, k, &f, &opts).expect("split");
        let whole = split_weight(&format, &packed, &kept, &cols, out, k);
        // The other way (W8A8's): GPTQ on the other columns alone (the
        // sub-matrices of W and H), the kept columns at their original values.
        let keep: Vec<usize> = (0..k).filter(|c| !cols.contains(c)).collect();
        let ks = keep.len();
        let hs: Vec<f64> = (0..ks * ks).map(|i| h[keep[i / ks] * k + keep[i % ks]]).collect();
        let ws: Vec<f32> = (0..out * ks).map(|i| w[(i / ks) * k + keep[i % ks]]).collect();
        // (Blocks of the sub-matrix: 124 columns, so 4 blocks of 32, the last one short.)
        let fs = Factor::new(&hs, ks, &opts).expect("factor");
        let sub = quantize_weight_gptq(&format, &ws, out, ks, &fs, &opts).expect("sub");
        let sq = dequantize(&format, &sub.iter().collect::<Vec<_>>(), out, ks).expect("dequantize");
        let mut original = w.clone();
        for r in 0..out {
            for (t, &c) in keep.iter().enumerate() {
                original[r * k + c] = sq[r * ks + t];
            }
        }
        let (ep, es, eo) = (
            output_error(&x, &w, &pq, k),
            output_error(&x, &w, &whole, k),
            output_error(&x, &w, &original, k),
        );
        eprintln!("output error: plain GPTQ {ep:.4e}, split {es:.4e}, GPTQ on the others with the original f32 columns {eo:.4e}");
        assert!(es < 0.8 * ep, "split {es} vs plain {ep}");
        assert!(es < eo, "absorbing {es} vs original columns {eo}");
    }

    #[test]
    fn dead_inputs_and_bad_shapes() {
        // An input that is always zero: H has a zero row; the factor still exists.
        let k = 8;
        let mut h = vec![0.0f64; k * k];
        for i in 1..k {
            h[i * k + i] = 2.0;
        }
        let opts = GptqOptions::default();
        let u = Factor::new(&h, k, &opts).expect("factor");
        assert!(u.u.iter().all(|v| v.is_finite()));
        assert!(inverse_factor(&h, k + 1, 0.01).is_err());
        assert!(Factor::new(&h, k + 1, &opts).is_err());
        let w = vec![0.5f32; 3 * k];
        let f = WeightFormat::Int4 {
            block: 32,
            with_min: false,
        };
        assert!(quantize_weight_gptq(&f, &w, 3, k, &u, &opts).is_ok());
        assert!(quantize_weight_gptq(&f, &w, 2, k, &u, &opts).is_err());
        let binary = WeightFormat::Binary { xnor: false };
        assert!(quantize_weight_gptq(&binary, &w, 3, k, &u, &opts).is_err());
        assert!(!supports(&binary));
    }
}
