//! Pooling: `MaxPool` (with its optional argmax `Indices` output),
//! `AveragePool` and `GlobalAveragePool` over the spatial axes of NCHW (2-D)
//! and NCDHW (3-D) tensors, and `MaskedMeanPool`, the mean of the token
//! vectors a mask keeps, per sequence (sentence-transformers' mean pooling).

use std::sync::Arc;

use rayon::prelude::*;

use super::conv::{Axis, Window};
use super::{attr_i64, check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::linalg;
use crate::tensor::{DType, Dim, Tensor, ValueType};

/// `MaxPool` or `AveragePool` over 2 or 3 spatial axes.
#[derive(Clone, Debug)]
pub struct Pool {
    /// True for `MaxPool`.
    pub max: bool,
    /// Window geometry (`kernel` is required; its length is the spatial rank).
    pub window: Window,
    /// `AveragePool`: count padding positions in the divisor.
    pub count_include_pad: bool,
    /// `MaxPool`: also output `Indices` (int64), each maximum's index into
    /// the flattened input (the first maximum of a window on ties; the first
    /// NaN when the window holds one).
    pub indices: bool,
    /// `Indices` count the spatial axes column-major (ONNX `storage_order = 1`).
    pub column_major: bool,
}

/// A pooling window along three axes (depth, height, width); a 2-D pool has
/// a depth of 1 with a kernel of 1.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geom {
    /// Input sizes.
    pub len: [usize; 3],
    /// Kernel sizes.
    pub k: [usize; 3],
    /// Strides.
    pub s: [usize; 3],
    /// Dilations.
    pub d: [usize; 3],
    /// Padding and output size.
    pub ax: [Axis; 3],
}

impl Geom {
    /// Output sizes.
    pub fn out(&self) -> [usize; 3] {
        [self.ax[0].out, self.ax[1].out, self.ax[2].out]
    }

    /// The input position that tap `t` of output `o` reads along axis `a`
    /// (negative or past the end in the padding).
    fn pos(&self, a: usize, o: usize, t: usize) -> isize {
        (o * self.s[a] + t * self.d[a]) as isize - self.ax[a].begin as isize
    }

    /// Calls `f(o, cells, padded)` for each output position `o` (flat within
    /// a plane): the flat indices (within an input plane) of the in-bounds
    /// cells its window reads, in row-major order of the taps, and how many
    /// taps fall inside the padded extent (for `count_include_pad`).
    fn each_window(&self, mut f: impl FnMut(usize, &[usize], usize)) {
        let [_, l1, l2] = self.len;
        let out = self.out();
        let inside = |a: usize, i: isize| i >= 0 && i < self.len[a] as isize;
        let in_pad = |a: usize, i: isize| i < (self.len[a] + self.ax[a].end) as isize;
        let mut cells = Vec::new();
        let mut o = 0;
        for oz in 0..out[0] {
            for oy in 0..out[1] {
                for ox in 0..out[2] {
                    cells.clear();
                    let mut padded = 0;
                    for tz in 0..self.k[0] {
                        let iz = self.pos(0, oz, tz);
                        for ty in 0..self.k[1] {
                            let iy = self.pos(1, oy, ty);
                            for tx in 0..self.k[2] {
                                let ix = self.pos(2, ox, tx);
                                if in_pad(0, iz) && in_pad(1, iy) && in_pad(2, ix) {
                                    padded += 1;
                                }
                                if inside(0, iz) && inside(1, iy) && inside(2, ix) {
                                    cells.push((iz as usize * l1 + iy as usize) * l2 + ix as usize);
                                }
                            }
                        }
                    }
                    f(o, &cells, padded);
                    o += 1;
                }
            }
        }
    }

    /// A row-major flat index within a plane, counted column-major instead
    /// (the first spatial axis fastest).
    fn column_major(&self, flat: usize) -> usize {
        let [l0, l1, l2] = self.len;
        let (iz, iy, ix) = (flat / (l1 * l2), (flat / l2) % l1, flat % l2);
        iz + iy * l0 + ix * l0 * l1
    }
}

/// A pooling call's input data, its shape and the window geometry.
type Frame<'a> = (&'a [f32], &'a [usize], Geom);

impl Pool {
    /// The window along three axes for an input with these spatial sizes.
    pub(crate) fn geom(&self, spatial: &[usize]) -> Result<Geom, OpError> {
        let w = &self.window;
        let r = w.rank();
        if w.kernel.len() != r {
            return Err(OpError::Attribute {
                name: "kernel_shape".into(),
                message: "is required".into(),
            });
        }
        if spatial.len() != r {
            return Err(OpError::Shape(format!(
                "a {r}-D window needs x with {r} spatial axes; got {}",
                spatial.len()
            )));
        }
        let lead = 3 - r;
        let none = Axis {
            begin: 0,
            end: 0,
            out: 1,
        };
        let mut g = Geom {
            len: [1; 3],
            k: [1; 3],
            s: [1; 3],
            d: [1; 3],
            ax: [none; 3],
        };
        for (i, &len) in spatial.iter().enumerate() {
            g.len[lead + i] = len;
            g.k[lead + i] = w.kernel[i];
            g.s[lead + i] = w.strides[i];
            g.d[lead + i] = w.dilations[i];
            g.ax[lead + i] = w.axis(i, len, w.kernel[i])?;
        }
        Ok(g)
    }

    /// Checks the single f32 input `[N, C, spatial...]` and plans the window.
    fn frame<'a>(&self, inputs: &[&'a Tensor]) -> Result<Frame<'a>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let s = inputs[0].shape();
        if s.len() != 2 + self.window.rank() {
            return Err(OpError::Shape(format!(
                "needs x [N, C, {} spatial axes]; got {s:?}",
                self.window.rank()
            )));
        }
        let x = f32_input(inputs, 0)?;
        Ok((x, s, self.geom(&s[2..])?))
    }

    /// The output shape for input shape `s`.
    fn out_shape(&self, s: &[usize], g: &Geom) -> Vec<usize> {
        let out = g.out();
        let mut shape = s[..2].to_vec();
        shape.extend_from_slice(&out[3 - self.window.rank()..]);
        shape
    }

    /// The output tensors: `y`, and `idx` when the op returns Indices.
    fn outputs(&self, s: &[usize], g: &Geom, y: Vec<f32>, idx: Vec<i64>) -> Result<Vec<Tensor>, OpError> {
        let shape = self.out_shape(s, g);
        let mut out = vec![Tensor::from_vec(shape.clone(), y)?];
        if self.indices {
            out.push(Tensor::from_vec(shape, idx)?);
        }
        Ok(out)
    }
}

impl Op for Pool {
    fn op_type(&self) -> &'static str {
        if self.max {
            "MaxPool"
        } else {
            "AveragePool"
        }
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        self.window.write(&mut a);
        if self.count_include_pad {
            a.insert("count_include_pad".into(), 1.into());
        }
        if self.indices {
            a.insert("outputs".into(), 2.into());
        }
        if self.column_major {
            a.insert("storage_order".into(), 1.into());
        }
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        check_f32(inputs)?;
        let x = &inputs[0];
        let r = self.window.rank();
        if x.rank() != 2 + r {
            return Err(OpError::Shape(format!(
                "needs x [N, C, {r} spatial axes] for a {r}-D window; got {}",
                x.shape_string()
            )));
        }
        let spatial: Option<Vec<usize>> = x.shape[2..].iter().map(|d| d.known()).collect();
        let Some(spatial) = spatial else {
            return Err(OpError::Shape(format!(
                "spatial sizes must be known, got {}",
                x.shape_string()
            )));
        };
        let g = self.geom(&spatial)?;
        let out = g.out();
        let mut shape = x.shape[..2].to_vec();
        shape.extend(out[3 - r..].iter().map(|&o| Dim::Known(o)));
        let mut types = vec![ValueType {
            dtype: x.dtype,
            shape: shape.clone(),
        }];
        if self.indices {
            types.push(ValueType {
                dtype: DType::I64,
                shape,
            });
        }
        Ok(types)
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (x, s, g) = self.frame(inputs)?;
        let nc = s[0] * s[1];
        let plane = g.len.iter().product::<usize>();
        let out_plane = g.out().iter().product::<usize>();
        let mut y = Vec::with_capacity(nc * out_plane);
        let mut idx = Vec::new();
        for p in 0..nc {
            let xp = &x[p * plane..][..plane];
            g.each_window(|_, cells, padded| {
                let mut best = f32::NEG_INFINITY;
                let mut first: Option<(usize, f32)> = None;
                let mut sum = 0.0f64;
                for &c in cells {
                    let v = xp[c];
                    best = nan_max(best, v);
                    if first.is_none_or(|(_, b)| v > b || (v.is_nan() && !b.is_nan())) {
                        first = Some((c, v));
                    }
                    sum += v as f64;
                }
                y.push(if self.max {
                    best
                } else {
                    let div = if self.count_include_pad { padded } else { cells.len() };
                    (sum / div.max(1) as f64) as f32
                });
                if self.indices {
                    // A window wholly in the padding has no maximum: -1.
                    idx.push(first.map_or(-1, |(c, _)| {
                        let c = if self.column_major { g.column_major(c) } else { c };
                        (p * plane + c) as i64
                    }));
                }
            });
        }
        self.outputs(s, &g, y, idx)
    }

    /// The reference's arithmetic, with each axis's in-bounds taps listed
    /// once (no per-element bounds tests) and planes in parallel. The
    /// Indices output is the reference's.
    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        if self.indices {
            return self.reference(inputs);
        }
        let (x, s, g) = self.frame(inputs)?;
        let nc = s[0] * s[1];
        let plane = g.len.iter().product::<usize>();
        let out = g.out();
        if self.max && g.len[0] == 1 && g.k[0] == 1 && g.d[1] == 1 && g.d[2] == 1 {
            return self.outputs(s, &g, max_pool_2d(&g, x, nc), Vec::new());
        }
        // Per output position along one axis: the input indices its window
        // reads, and how many taps fall inside the padded extent.
        let taps = |a: usize| {
            (0..out[a])
                .map(|o| {
                    let at = |t: usize| g.pos(a, o, t);
                    let valid: Vec<usize> = (0..g.k[a])
                        .map(at)
                        .filter(|&i| i >= 0 && i < g.len[a] as isize)
                        .map(|i| i as usize)
                        .collect();
                    let end = (g.len[a] + g.ax[a].end) as isize;
                    let padded = (0..g.k[a]).map(at).filter(|&i| i < end).count();
                    (valid, padded)
                })
                .collect::<Vec<_>>()
        };
        let (tz, ty, tx) = (taps(0), taps(1), taps(2));
        let (l1, l2) = (g.len[1], g.len[2]);
        let out_plane = out.iter().product::<usize>();
        let mut y = vec![0.0f32; nc * out_plane];
        let plane_fn = |p: usize, yp: &mut [f32]| {
            let xp = &x[p * plane..][..plane];
            let mut o = 0;
            for (izs, pz) in &tz {
                for (iys, py) in &ty {
                    for (ixs, px) in &tx {
                        let mut best = f32::NEG_INFINITY;
                        let mut sum = 0.0f64;
                        for &iz in izs {
                            for &iy in iys {
                                let row = &xp[(iz * l1 + iy) * l2..][..l2];
                                for &ix in ixs {
                                    if self.max {
                                        best = nan_max(best, row[ix]);
                                    } else {
                                        sum += row[ix] as f64;
                                    }
                                }
                            }
                        }
                        yp[o] = if self.max {
                            best
                        } else {
                            let div = if self.count_include_pad {
                                pz * py * px
                            } else {
                                izs.len() * iys.len() * ixs.len()
                            };
                            (sum / div.max(1) as f64) as f32
                        };
                        o += 1;
                    }
                }
            }
        };
        if out_plane > 0 {
            if nc * out_plane >= 1 << 14 {
                y.par_chunks_mut(out_plane)
                    .enumerate()
                    .for_each(|(p, yp)| plane_fn(p, yp));
            } else {
                y.chunks_mut(out_plane).enumerate().for_each(|(p, yp)| plane_fn(p, yp));
            }
        }
        self.outputs(s, &g, y, Vec::new())
    }

    /// MaxPool sends each window's gradient to its first largest element
    /// (as the forward's `max` picks it); AveragePool spreads it evenly over
    /// the window's divisor (padding positions, when counted, take their
    /// share and drop it).
    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        let (x, s, g) = self.frame(inputs)?;
        let dy = f32_input(grads, 0)?;
        let nc = s[0] * s[1];
        let plane = g.len.iter().product::<usize>();
        let out_plane = g.out().iter().product::<usize>();
        if dy.len() != nc * out_plane {
            return Err(OpError::Shape(format!(
                "the output gradient has {} values, not {}",
                dy.len(),
                nc * out_plane
            )));
        }
        let mut dx = vec![0.0f32; x.len()];
        for p in 0..nc {
            let base = p * plane;
            g.each_window(|o, cells, padded| {
                let grad = dy[p * out_plane + o];
                if self.max {
                    let best = cells.iter().copied().fold(None, |b: Option<usize>, i| match b {
                        Some(j) if x[base + j] >= x[base + i] => Some(j),
                        _ => Some(i),
                    });
                    if let Some(i) = best {
                        dx[base + i] += grad;
                    }
                } else {
                    let div = if self.count_include_pad { padded } else { cells.len() };
                    let share = grad / div.max(1) as f32;
                    for &i in cells {
                        dx[base + i] += share;
                    }
                }
            });
        }
        Ok(vec![Some(Tensor::from_vec(s.to_vec(), dx)?)])
    }

    fn validation(&self) -> Validation {
        if self.max {
            Validation::Exact
        } else {
            Validation::Rounding
        }
    }
}

/// Below this many outputs a pooling op runs on one thread.
const PARALLEL_MIN_OUT: usize = 1 << 14;
/// Outputs a thread takes at a time in a parallel [`max_pool_2d`].
const PLANES_MIN_OUT: usize = 1 << 11;

/// 2-D max pooling without dilation over `nc` planes: per output row, each
/// tap `(ty, tx)` of the window is a strided pass over one input row into
/// the row of running maxima (contiguous for unit strides, so it
/// vectorizes), with the taps that fall in the padding skipped by range.
/// Planes run in parallel for large inputs.
fn max_pool_2d(g: &Geom, x: &[f32], nc: usize) -> Vec<f32> {
    let (h, w) = (g.len[1], g.len[2]);
    let ([_, oh, ow], [_, ky, kx], [_, sy, sx]) = (g.out(), g.k, g.s);
    let (py, px) = (g.ax[1].begin, g.ax[2].begin);
    // Per tap tx: the outputs [lo, hi) whose input ox·sx + tx - px is inside the row.
    let ranges: Vec<(usize, usize, isize)> = (0..kx)
        .map(|tx| {
            let off = tx as isize - px as isize;
            let st = sx as isize;
            let lo = if off >= 0 { 0 } else { ((-off + st - 1) / st) as usize }.min(ow);
            let hi = (((w as isize - off).max(0) + st - 1) / st).clamp(lo as isize, ow as isize) as usize;
            (lo, hi, off)
        })
        .collect();
    let pairs = [ky, kx, sy, sx] == [2, 2, 2, 2] && py == 0 && px == 0 && 2 * oh <= h && 2 * ow <= w;
    if pairs && h == 2 * oh && w == 2 * ow {
        return max_pool_pairs_flat(x, nc, oh, ow);
    }
    let plane_fn = |xp: &[f32], yp: &mut [f32]| {
        if pairs {
            // The common 2×2 window, stride 2, no padding: one pass per output row.
            for (oy, out) in yp.chunks_mut(ow.max(1)).enumerate() {
                let (r0, r1) = (&xp[2 * oy * w..][..2 * ow], &xp[(2 * oy + 1) * w..][..2 * ow]);
                for ((o, a), b) in out.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
                    *o = nan_max(nan_max(nan_max(f32::NEG_INFINITY, a[0]), a[1]), nan_max(b[0], b[1]));
                }
            }
            return;
        }
        for (oy, out) in yp.chunks_mut(ow.max(1)).enumerate() {
            out.fill(f32::NEG_INFINITY);
            for ty in 0..ky {
                let iy = (oy * sy + ty) as isize - py as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = &xp[iy as usize * w..][..w];
                for &(lo, hi, off) in ranges.iter().filter(|r| r.1 > r.0) {
                    let first = (lo as isize * sx as isize + off) as usize;
                    let src = row[first..].iter().step_by(sx);
                    for (o, &v) in out[lo..hi].iter_mut().zip(src) {
                        *o = nan_max(*o, v);
                    }
                }
            }
        }
    };
    let (plane, out_plane) = (h * w, oh * ow);
    let mut y = vec![0.0f32; nc * out_plane];
    if out_plane == 0 {
        return y;
    }
    let each = |(p, yp): (usize, &mut [f32])| linalg::simd(|| plane_fn(&x[p * plane..][..plane], yp));
    if y.len() >= PARALLEL_MIN_OUT {
        // Planes in chunks of at least PLANES_MIN_OUT outputs, on the
        // spinning workers of `linalg::pool`.
        let per = PLANES_MIN_OUT.div_ceil(out_plane);
        linalg::pool::for_each_mut(&mut y, out_plane, per, |p, yp| each((p, yp)));
    } else {
        y.chunks_mut(out_plane).enumerate().for_each(each);
    }
    y
}

/// The 2×2, stride-2 MaxPool of `nc` planes of `oh × ow` outputs that
/// split exactly into windows: output row `r` reads input rows `2r` and
/// `2r + 1` of `2·ow` (the planes follow one another, so a run of planes
/// is one run of row pairs). Per run, a pass of row-pair maxima over the
/// input (contiguous rows, so it vectorizes), then one of column-pair
/// maxima over that half: `max(max(a0, b0), max(a1, b1))`, a NaN anywhere
/// in the window giving NaN. Runs of planes go to `linalg::pool` for large
/// tensors.
fn max_pool_pairs_flat(x: &[f32], nc: usize, oh: usize, ow: usize) -> Vec<f32> {
    let out_plane = oh * ow;
    let mut y = vec![0.0f32; nc * out_plane];
    if out_plane == 0 {
        return y;
    }
    let run = |p0: usize, y: &mut [f32]| {
        let xs = &x[4 * p0 * out_plane..][..4 * y.len()];
        let mut half = vec![0.0f32; 2 * y.len()];
        linalg::simd(|| {
            for (out, pair) in half.chunks_exact_mut(2 * ow).zip(xs.chunks_exact(4 * ow)) {
                let (a, b) = pair.split_at(2 * ow);
                for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                    *o = nan_max(a, b);
                }
            }
            for (o, p) in y.iter_mut().zip(half.chunks_exact(2)) {
                *o = nan_max(p[0], p[1]);
            }
        });
    };
    if y.len() >= PARALLEL_MIN_OUT {
        let per = PLANES_MIN_OUT.div_ceil(out_plane);
        linalg::pool::for_each_mut(&mut y, per * out_plane, 1, |i, ys| run(i * per, ys));
    } else {
        run(0, &mut y);
    }
    y
}

/// The running maximum of MaxPool: `v` if it is greater than `m` or NaN, so a
/// NaN anywhere in the window makes the result NaN (`f32::max` drops NaN).
#[inline]
fn nan_max(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() {
        v
    } else {
        m
    }
}

fn build_pool(max: bool, attrs: &Attrs) -> Result<Arc<dyn Op>, OpError> {
    let storage_order = attr_i64(attrs, "storage_order", Some(0))?;
    if storage_order != 0 && storage_order != 1 {
        return Err(OpError::Attribute {
            name: "storage_order".into(),
            message: format!("{storage_order}: must be 0 (row-major) or 1 (column-major)"),
        });
    }
    let outputs = attr_i64(attrs, "outputs", Some(1))?;
    if outputs != 1 && !(max && outputs == 2) {
        return Err(OpError::Attribute {
            name: "outputs".into(),
            message: format!("{outputs}: must be 1 (or 2 for MaxPool's Indices)"),
        });
    }
    Ok(Arc::new(Pool {
        max,
        window: Window::from_attrs(attrs, true)?,
        count_include_pad: attr_i64(attrs, "count_include_pad", Some(0))? != 0,
        indices: outputs == 2,
        column_major: storage_order == 1,
    }))
}

fn pool_cases(max: bool) -> Vec<OpCase> {
    let mut rng = CaseRng::new(if max { 51 } else { 52 });
    let mut geoms: Vec<(&[usize], serde_json::Value)> = vec![
        (
            &[1, 1, 4, 4],
            serde_json::json!({"kernel_shape": [2, 2], "strides": [2, 2]}),
        ),
        (
            &[2, 3, 17, 13],
            serde_json::json!({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        ),
        (
            &[1, 2, 9, 7],
            serde_json::json!({"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1}),
        ),
        (
            &[1, 2, 8, 5],
            serde_json::json!({"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 1], "count_include_pad": 1}),
        ),
        // 3-D windows.
        (
            &[1, 2, 5, 6, 7],
            serde_json::json!({"kernel_shape": [2, 3, 2], "strides": [1, 2, 2], "pads": [1, 0, 1, 0, 1, 1]}),
        ),
        (
            &[2, 1, 7, 5, 4],
            serde_json::json!({"kernel_shape": [3, 2, 2], "dilations": [2, 1, 1], "strides": [2, 2, 1], "ceil_mode": 1, "count_include_pad": 1, "pads": [1, 1, 0, 1, 0, 1]}),
        ),
    ];
    if max {
        // The Indices output: row-major (2-D, 3-D) and column-major.
        geoms.push((
            &[2, 3, 7, 6],
            serde_json::json!({"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1], "outputs": 2}),
        ));
        geoms.push((
            &[1, 2, 5, 6],
            serde_json::json!({"kernel_shape": [2, 3], "strides": [1, 2], "storage_order": 1, "outputs": 2}),
        ));
        geoms.push((
            &[1, 2, 4, 5, 3],
            serde_json::json!({"kernel_shape": [2, 2, 2], "pads": [0, 1, 0, 1, 0, 1], "outputs": 2}),
        ));
    }
    geoms
        .iter()
        .map(|(s, a)| {
            let attrs: Attrs = a.as_object().cloned().unwrap_or_default();
            let op = build_pool(max, &attrs).unwrap_or_else(|e| unreachable!("case attributes are valid: {e}"));
            let x = if max {
                distinct(&mut rng, s)
            } else {
                rng.tensor(s, -1.0, 1.0)
            };
            OpCase::new(format!("pool {s:?} {a}"), op, vec![x])
        })
        .collect()
}

/// Distinct values 0.05 apart in random order: every window has one clear
/// maximum, so finite differences (steps of about 0.01) never cross a tie.
fn distinct(rng: &mut CaseRng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.05).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    Tensor::from_vec(shape.to_vec(), v).unwrap_or_else(|e| unreachable!("n values for the shape: {e}"))
}

fn pool_sample(max: bool, rng: &mut CaseRng) -> OpCase {
    let s = [rng.range(1, 2), rng.range(1, 3), rng.range(3, 12), rng.range(3, 12)];
    let k = rng.range(1, 3);
    let st = rng.range(1, 2);
    let p = rng.range(0, k - 1);
    let a = serde_json::json!({"kernel_shape": [k, k], "strides": [st, st], "pads": [p, p, p, p]});
    let attrs: Attrs = a.as_object().cloned().unwrap_or_default();
    let op = build_pool(max, &attrs).unwrap_or_else(|e| unreachable!("sample attributes are valid: {e}"));
    let x = rng.tensor(&s, -1.0, 1.0);
    OpCase::new(format!("pool {s:?} {a}"), op, vec![x])
}

/// `MaxPool`: `kernel_shape` (2 or 3 axes), `pads`, `strides`, `dilations`,
/// `auto_pad`, `ceil_mode`, `storage_order`, and `outputs` (2: also Indices).
pub const MAX_POOL: OpDef = OpDef {
    op_type: "MaxPool",
    build: |a| build_pool(true, a),
    cases: || pool_cases(true),
    sample: |r| pool_sample(true, r),
};

/// `AveragePool`: as MaxPool, plus `count_include_pad`.
pub const AVERAGE_POOL: OpDef = OpDef {
    op_type: "AveragePool",
    build: |a| build_pool(false, a),
    cases: || pool_cases(false),
    sample: |r| pool_sample(false, r),
};

/// `GlobalAveragePool`: the mean over every axis after the first two.
#[derive(Clone, Debug, Default)]
pub struct GlobalAveragePool;

impl Op for GlobalAveragePool {
    fn op_type(&self) -> &'static str {
        "GlobalAveragePool"
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        check_f32(inputs)?;
        let x = &inputs[0];
        if x.rank() < 2 {
            return Err(OpError::Shape(format!("needs x [N, C, ...]; got {}", x.shape_string())));
        }
        let mut shape = x.shape.clone();
        for d in shape.iter_mut().skip(2) {
            *d = Dim::Known(1);
        }
        Ok(vec![ValueType { dtype: x.dtype, shape }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let s = inputs[0].shape();
        if s.len() < 2 {
            return Err(OpError::Shape(format!("needs x [N, C, ...]; got {s:?}")));
        }
        let x = f32_input(inputs, 0)?;
        let inner: usize = s[2..].iter().product();
        let y = x
            .chunks(inner.max(1))
            .take(s[0] * s[1])
            .map(|c| (c.iter().map(|&v| v as f64).sum::<f64>() / inner.max(1) as f64) as f32)
            .collect();
        let mut shape = s.to_vec();
        for d in shape.iter_mut().skip(2) {
            *d = 1;
        }
        Ok(vec![Tensor::from_vec(shape, y)?])
    }

    /// Each element gets its plane's gradient divided by the plane's size.
    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let s = inputs[0].shape();
        if s.len() < 2 {
            return Err(OpError::Shape(format!("needs x [N, C, ...]; got {s:?}")));
        }
        let inner: usize = s[2..].iter().product::<usize>().max(1);
        let dy = f32_input(grads, 0)?;
        if dy.len() != s[0] * s[1] {
            return Err(OpError::Shape(format!(
                "the output gradient has {} values, not {}",
                dy.len(),
                s[0] * s[1]
            )));
        }
        let dx = (0..inputs[0].numel()).map(|i| dy[i / inner] / inner as f32).collect();
        Ok(vec![Some(Tensor::from_vec(s.to_vec(), dx)?)])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }
}

/// `GlobalAveragePool`.
pub const GLOBAL_AVERAGE_POOL: OpDef = OpDef {
    op_type: "GlobalAveragePool",
    build: |_| Ok(Arc::new(GlobalAveragePool)),
    cases: || {
        let mut rng = CaseRng::new(53);
        [&[1usize, 1, 1, 1][..], &[2, 3, 17, 13], &[1, 5, 7]]
            .iter()
            .map(|s| {
                OpCase::new(
                    format!("gap {s:?}"),
                    Arc::new(GlobalAveragePool),
                    vec![rng.tensor(s, -1.0, 1.0)],
                )
            })
            .collect()
    },
    sample: |rng| {
        let s = [rng.range(1, 2), rng.range(1, 4), rng.dim(12), rng.dim(12)];
        let x = rng.tensor(&s, -1.0, 1.0);
        OpCase::new(format!("gap {s:?}"), Arc::new(GlobalAveragePool), vec![x])
    },
};

/// The smallest divisor: a row with no kept tokens pools to zeros, not NaN
/// (sentence-transformers clamps `Σ mask` to 1e-9).
pub const MIN_COUNT: f32 = 1e-9;

/// `y[b, e] = Σ_s mask[b, s] · x[b, s, e] / max(Σ_s mask[b, s], 1e-9)`.
///
/// Inputs `x [B, S, E]` and `mask [B, S]` (f32, usually 0/1); output `[B, E]`.
#[derive(Clone, Debug, Default)]
pub struct MaskedMeanPool;

fn dims(x: &[usize], m: &[usize]) -> Result<(usize, usize, usize), OpError> {
    if x.len() != 3 || m.len() != 2 || m[0] != x[0] || m[1] != x[1] {
        return Err(OpError::Shape(format!(
            "needs x [batch, seq, width] and mask [batch, seq]; got x {x:?}, mask {m:?}"
        )));
    }
    Ok((x[0], x[1], x[2]))
}

impl Op for MaskedMeanPool {
    fn op_type(&self) -> &'static str {
        "MaskedMeanPool"
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (x, mask)")?;
        check_f32(inputs)?;
        let (x, m) = (&inputs[0], &inputs[1]);
        let clash = |i: usize| matches!((x.shape[i].known(), m.shape[i].known()), (Some(a), Some(b)) if a != b);
        if x.rank() != 3 || m.rank() != 2 || clash(0) || clash(1) {
            return Err(OpError::Shape(format!(
                "needs x [batch, seq, width] and mask [batch, seq]; got x {}, mask {}",
                x.shape_string(),
                m.shape_string()
            )));
        }
        Ok(vec![ValueType {
            dtype: x.dtype,
            shape: vec![x.shape[0].clone(), x.shape[2].clone()],
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (x, mask)")?;
        let (b, s, e) = dims(inputs[0].shape(), inputs[1].shape())?;
        let (x, m) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let mut y = vec![0.0f32; b * e];
        for bi in 0..b {
            let count: f64 = (0..s).map(|si| m[bi * s + si] as f64).sum();
            let den = count.max(MIN_COUNT as f64);
            for ei in 0..e {
                let acc: f64 = (0..s)
                    .map(|si| m[bi * s + si] as f64 * x[(bi * s + si) * e + ei] as f64)
                    .sum();
                y[bi * e + ei] = (acc / den) as f32;
            }
        }
        Ok(vec![Tensor::from_vec(vec![b, e], y)?])
    }

    /// Per sequence in parallel, accumulating whole token rows (contiguous).
    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (x, mask)")?;
        let (b, s, e) = dims(inputs[0].shape(), inputs[1].shape())?;
        let (x, m) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let mut y = vec![0.0f32; b * e];
        if e == 0 {
            return Ok(vec![Tensor::from_vec(vec![b, e], y)?]);
        }
        let pool = |(bi, row): (usize, &mut [f32])| {
            let mut count = 0.0f32;
            for si in 0..s {
                let w = m[bi * s + si];
                count += w;
                if w != 0.0 {
                    for (o, &v) in row.iter_mut().zip(&x[(bi * s + si) * e..][..e]) {
                        *o += w * v;
                    }
                }
            }
            let inv = 1.0 / count.max(MIN_COUNT);
            for o in row.iter_mut() {
                *o *= inv;
            }
        };
        if x.len() >= 1 << 15 {
            y.par_chunks_mut(e).enumerate().for_each(pool);
        } else {
            y.chunks_mut(e).enumerate().for_each(pool);
        }
        Ok(vec![Tensor::from_vec(vec![b, e], y)?])
    }

    /// `dx[b, s, e] = mask[b, s] · dy[b, e] / max(Σ mask, 1e-9)`; the mask has none.
    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (x, mask)")?;
        let (b, s, e) = dims(inputs[0].shape(), inputs[1].shape())?;
        let (m, dy) = (f32_input(inputs, 1)?, f32_input(grads, 0)?);
        let mut dx = vec![0.0f32; b * s * e];
        for bi in 0..b {
            let count: f64 = (0..s).map(|si| m[bi * s + si] as f64).sum();
            let den = count.max(MIN_COUNT as f64);
            for si in 0..s {
                let w = m[bi * s + si] as f64 / den;
                for ei in 0..e {
                    dx[(bi * s + si) * e + ei] = (w * dy[bi * e + ei] as f64) as f32;
                }
            }
        }
        Ok(vec![Some(Tensor::from_vec(vec![b, s, e], dx)?), None])
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }
}

fn case(rng: &mut CaseRng, b: usize, s: usize, e: usize, valid: &[usize]) -> OpCase {
    let m: Vec<f32> = (0..b * s)
        .map(|i| if i % s < valid[i / s] { 1.0 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(vec![b, s], m).unwrap_or_else(|_| unreachable!("numel matches"));
    OpCase::new(
        format!("masked mean pool [{b}, {s}, {e}] valid {valid:?}"),
        Arc::new(MaskedMeanPool),
        vec![rng.tensor(&[b, s, e], -2.0, 2.0), mask],
    )
}

/// `MaskedMeanPool`: no attributes; inputs `x [B, S, E]`, `mask [B, S]`.
pub const MASKED_MEAN_POOL: OpDef = OpDef {
    op_type: "MaskedMeanPool",
    build: |_: &Attrs| Ok(Arc::new(MaskedMeanPool)),
    cases: || {
        let mut rng = CaseRng::new(94);
        vec![
            case(&mut rng, 1, 1, 1, &[1]),
            case(&mut rng, 3, 17, 384, &[17, 5, 0]),
            case(&mut rng, 2, 33, 7, &[1, 33]),
            case(&mut rng, 17, 3, 1000, &[3; 17]),
        ]
    },
    sample: |rng| {
        let (b, s, e) = (rng.range(1, 4), rng.dim(33), rng.dim(65));
        let valid: Vec<usize> = (0..b).map(|_| rng.range(0, s)).collect();
        case(rng, b, s, e, &valid)
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The 2-D max-pool path against the reference: strides, pads,
    /// `ceil_mode`, windows wider than the stride, a NaN, and enough planes
    /// to run in parallel.
    #[test]
    fn max_pool_2d_matches_reference() {
        let mut rng = CaseRng::new(9);
        for (shape, a) in [
            (
                [64, 32, 28, 28],
                serde_json::json!({"kernel_shape": [2, 2], "strides": [2, 2]}),
            ),
            (
                [3, 5, 8, 6],
                serde_json::json!({"kernel_shape": [2, 2], "strides": [2, 2]}),
            ),
            (
                [2, 3, 9, 11],
                serde_json::json!({"kernel_shape": [3, 3], "strides": [2, 3], "pads": [1, 2, 0, 1]}),
            ),
            (
                [1, 2, 7, 7],
                serde_json::json!({"kernel_shape": [2, 3], "strides": [3, 2], "ceil_mode": 1}),
            ),
            (
                [3, 1, 5, 6],
                serde_json::json!({"kernel_shape": [3, 3], "auto_pad": "SAME_LOWER"}),
            ),
            (
                [1, 1, 2, 2],
                serde_json::json!({"kernel_shape": [3, 3], "pads": [2, 2, 2, 2], "strides": [2, 2]}),
            ),
        ] {
            let attrs: Attrs = a.as_object().cloned().unwrap_or_default();
            let op = build_pool(true, &attrs).unwrap();
            let mut v: Vec<f32> = rng.tensor(&shape, -1.0, 1.0).into_vec().unwrap();
            v[3] = f32::NAN;
            let x = Tensor::from_vec(shape.to_vec(), v).unwrap();
            let got = op.cpu(&[&x]).unwrap();
            let want = op.reference(&[&x]).unwrap();
            assert_eq!(got[0].shape(), want[0].shape(), "{a}");
            for (i, (g, w)) in got[0]
                .as_f32()
                .unwrap()
                .iter()
                .zip(want[0].as_f32().unwrap())
                .enumerate()
            {
                assert!(
                    g == w || (g.is_nan() && w.is_nan()),
                    "{shape:?} {a}: y[{i}] = {g}, want {w}"
                );
            }
        }
    }

    #[test]
    fn mean_of_kept_tokens_by_hand() {
        // Batch 0 keeps tokens 0 and 1 of 3; batch 1 keeps none (zeros, not NaN).
        let x = Tensor::from_vec(
            vec![2, 3, 2],
            vec![1.0f32, 2.0, 3.0, 6.0, 100.0, 100.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
        )
        .unwrap();
        let m = Tensor::from_vec(vec![2, 3], vec![1.0f32, 1.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
        for y in [
            MaskedMeanPool.reference(&[&x, &m]).unwrap(),
            MaskedMeanPool.cpu(&[&x, &m]).unwrap(),
        ] {
            assert_eq!(y[0].shape(), &[2, 2]);
            assert_eq!(y[0].as_f32().unwrap(), &[2.0, 4.0, 0.0, 0.0]);
        }
    }

    #[test]
    fn mismatched_mask_is_an_error() {
        let x = Tensor::from_vec(vec![1, 2, 2], vec![0.0f32; 4]).unwrap();
        let m = Tensor::from_vec(vec![1, 3], vec![1.0f32; 3]).unwrap();
        assert!(MaskedMeanPool.cpu(&[&x, &m]).is_err());
    }
}
