//! Activations quantized to 8 bits per block, once per product: the integer
//! side of every block dot product.

/// `n` rows of activations quantized symmetrically per block of
/// `block_len` (32 for the 32-weight formats, 256 for the k-quants):
/// `d = max|x|/127`, `q = round(x/d)` (ties to even), `x ≈ d·q`. A block
/// holding an infinity or NaN gets `d = NaN`, so the products it enters are NaN.
#[derive(Clone, Debug, Default)]
pub struct QActs {
    /// Values per block (32 or 256).
    pub block_len: usize,
    /// Values per row.
    pub cols: usize,
    /// Rows.
    pub n: usize,
    /// The quantized values, row after row (`n · cols`).
    pub qs: Vec<i8>,
    /// One scale per block (`n · cols / block_len`).
    pub d: Vec<f32>,
    /// Per block `d · Σq` (the term a block minimum multiplies).
    pub ds: Vec<f32>,
    /// `Σq` over each group of 16 values (`n · cols / 16`).
    pub sums16: Vec<i16>,
}

impl QActs {
    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.cols / self.block_len.max(1)
    }
}

/// `round(v)` with ties to even for `|v| < 2^22`, branch-free (adding
/// `1.5·2^23` leaves the integer in the low mantissa bits), so loops over it
/// vectorize without SSE4.1.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits();
    (bits & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Quantizes `n` rows of `cols` values (`cols` a multiple of `block_len`,
/// which is a multiple of 16) into `acts`, reusing its buffers.
pub fn quantize_acts(x: &[f32], n: usize, cols: usize, block_len: usize, acts: &mut QActs) {
    let blocks = n * cols / block_len;
    acts.block_len = block_len;
    acts.cols = cols;
    acts.n = n;
    acts.qs.resize(n * cols, 0);
    acts.d.resize(blocks, 0.0);
    acts.ds.resize(blocks, 0.0);
    acts.sums16.resize(n * cols / 16, 0);
    let parts = x[..n * cols]
        .chunks_exact(block_len)
        .zip(acts.qs.chunks_exact_mut(block_len))
        .zip(acts.d.iter_mut().zip(acts.ds.iter_mut()))
        .zip(acts.sums16.chunks_exact_mut(block_len / 16));
    super::super::simd(|| {
        for (((xb, qb), (d, ds)), sums) in parts {
            quantize_block(xb, qb, d, ds, sums);
        }
    });
}

#[inline(always)]
fn quantize_block(x: &[f32], q: &mut [i8], d: &mut f32, ds: &mut f32, sums: &mut [i16]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    *d = amax / 127.0;
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (o, &v) in q.iter_mut().zip(x) {
        *o = nearest_int(v * id).clamp(-127, 127) as i8;
    }
    let mut total = 0i32;
    for (s, g) in sums.iter_mut().zip(q.chunks_exact(16)) {
        let t: i32 = g.iter().map(|&v| i32::from(v)).sum();
        *s = t as i16;
        total += t;
    }
    *ds = *d * total as f32;
    if !x.iter().all(|v| v.is_finite()) {
        *d = f32::NAN;
        *ds = f32::NAN;
    }
}

/// `n` rows of activations quantized to 16 bits per group of 32 values
/// (every format's blocks are whole groups): `d = max|x|/32767`,
/// `q = round(x/d)` (ties to even), `x ≈ d·q`, so a value is off by at most
/// `max|x|/65534`, 258× less than [`QActs`]. Each group also keeps its f32
/// sum `Σx` (the term a block minimum multiplies). A group holding an
/// infinity or NaN gets `d = sum = NaN`, so the products it enters are NaN.
#[derive(Clone, Debug, Default)]
pub struct QActs16 {
    /// Values per row.
    pub cols: usize,
    /// Rows.
    pub n: usize,
    /// The quantized values, row after row (`n · cols`).
    pub qs: Vec<i16>,
    /// One scale per group of 32 (`n · cols / 32`).
    pub d: Vec<f32>,
    /// `Σx` per group of 32 (`n · cols / 32`).
    pub sum: Vec<f32>,
    /// `qs` in tiles of [`ROW_TILE16`] rows, each tile group by group with
    /// its rows side by side: group `g` of row `t` (in tile `k = t / 8`,
    /// which has `w = min(8, n - 8k)` rows) at `(8k · groups + g · w + t % 8) · 32`,
    /// so the rows of one tile are one run of memory.
    pub(crate) qs_by_group: Vec<i16>,
    /// `d` by group: `d_by_group[g · (n + 7) + t] = d[t · groups + g]`,
    /// each group's run padded with 7 zeros so eight lanes load from any row.
    pub(crate) d_by_group: Vec<f32>,
    /// `sum` laid out as `d_by_group`.
    pub(crate) sum_by_group: Vec<f32>,
}

impl QActs16 {
    /// Groups of 32 per row.
    pub fn groups(&self) -> usize {
        self.cols / 32
    }

    /// The distance between groups in [`QActs16::d_by_group`] and
    /// [`QActs16::sum_by_group`].
    pub(crate) fn group_stride(&self) -> usize {
        self.n + 7
    }
}

/// Rows per tile of [`QActs16::qs_by_group`].
pub(crate) const ROW_TILE16: usize = 8;

/// Quantizes `n` rows of `cols` values (`cols` a multiple of 32) to 16 bits
/// into `acts`, reusing its buffers; also lays the values out in tiles of
/// [`ROW_TILE16`] rows and the scales and sums group by group, as the
/// kernels that take several rows at once read them.
pub fn quantize_acts16(x: &[f32], n: usize, cols: usize, acts: &mut QActs16) {
    let groups = n * cols / 32;
    acts.cols = cols;
    acts.n = n;
    acts.qs.resize(n * cols, 0);
    acts.d.resize(groups, 0.0);
    acts.sum.resize(groups, 0.0);
    let parts = x[..n * cols]
        .chunks_exact(32)
        .zip(acts.qs.chunks_exact_mut(32))
        .zip(acts.d.iter_mut().zip(acts.sum.iter_mut()));
    super::super::simd(|| {
        for ((xg, qg), (d, sum)) in parts {
            quantize_group16(xg, qg, d, sum);
        }
    });
    let (ng, stride) = (acts.groups(), acts.group_stride());
    acts.d_by_group.clear();
    acts.d_by_group.resize(ng * stride, 0.0);
    acts.sum_by_group.clear();
    acts.sum_by_group.resize(ng * stride, 0.0);
    acts.qs_by_group.resize(n * cols, 0);
    for t in 0..n {
        let k = t / ROW_TILE16 * ROW_TILE16;
        let w = ROW_TILE16.min(n - k);
        for g in 0..ng {
            let (from, to) = ((t * ng + g) * 32, (k * ng + g * w + t % ROW_TILE16) * 32);
            acts.qs_by_group[to..to + 32].copy_from_slice(&acts.qs[from..from + 32]);
            acts.d_by_group[g * stride + t] = acts.d[t * ng + g];
            acts.sum_by_group[g * stride + t] = acts.sum[t * ng + g];
        }
    }
}

#[inline(always)]
fn quantize_group16(x: &[f32], q: &mut [i16], d: &mut f32, sum: &mut f32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    *d = amax / 32767.0;
    let id = if amax > 0.0 { 32767.0 / amax } else { 0.0 };
    for (o, &v) in q.iter_mut().zip(x) {
        *o = nearest_int(v * id).clamp(-32767, 32767) as i16;
    }
    *sum = x.iter().sum();
    if !x.iter().all(|v| v.is_finite()) {
        *d = f32::NAN;
        *sum = f32::NAN;
    }
}
