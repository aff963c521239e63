//! 2-D convolution (`Conv`, NCHW) with pads, strides, dilations, groups and
//! `auto_pad`; also the window geometry shared with the pooling ops.

use std::sync::Arc;

use rayon::prelude::*;

use super::pool::Pool;
use super::Validation;
use super::{
    attr_i64, attr_ints, attr_str, check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Prepared,
};
use crate::error::OpError;
use crate::linalg::conv::{conv2d, conv2d_max_pool2, ConvShape, Im2col, PackedLhs};
use crate::linalg::{self, MatRef};
use crate::tensor::{Dim, Tensor, ValueType};

/// How padding is chosen (ONNX `auto_pad`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoPad {
    /// Explicit `pads`.
    NotSet,
    /// Output size `ceil(in / stride)`; an odd extra pad goes at the end.
    SameUpper,
    /// Output size `ceil(in / stride)`; an odd extra pad goes at the start.
    SameLower,
    /// No padding.
    Valid,
}

impl AutoPad {
    /// Parses the ONNX spelling.
    pub fn parse(s: &str) -> Result<Self, OpError> {
        match s {
            "NOTSET" | "" => Ok(AutoPad::NotSet),
            "SAME_UPPER" => Ok(AutoPad::SameUpper),
            "SAME_LOWER" => Ok(AutoPad::SameLower),
            "VALID" => Ok(AutoPad::Valid),
            other => Err(OpError::Attribute {
                name: "auto_pad".into(),
                message: format!("`{other}` is not NOTSET, SAME_UPPER, SAME_LOWER or VALID"),
            }),
        }
    }

    /// The ONNX spelling.
    pub fn name(self) -> &'static str {
        match self {
            AutoPad::NotSet => "NOTSET",
            AutoPad::SameUpper => "SAME_UPPER",
            AutoPad::SameLower => "SAME_LOWER",
            AutoPad::Valid => "VALID",
        }
    }
}

/// The geometry of a 2-D or 3-D sliding window: kernel, strides, dilations,
/// pads (`[begin of each axis, end of each axis]`, ONNX order) and `auto_pad`.
/// Every list has one entry per spatial axis (`pads` two).
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// Kernel size per axis (empty for Conv: taken from the weight).
    pub kernel: Vec<usize>,
    /// Strides (default 1).
    pub strides: Vec<usize>,
    /// Dilations (default 1).
    pub dilations: Vec<usize>,
    /// Explicit pads: the begin of each axis, then the end of each
    /// (`[top, left, bottom, right]` in 2-D).
    pub pads: Vec<usize>,
    /// Automatic padding.
    pub auto_pad: AutoPad,
    /// Round the output size up (pooling).
    pub ceil_mode: bool,
}

/// Resolved padding and output size along one axis.
#[derive(Clone, Copy, Debug)]
pub struct Axis {
    /// Pad before.
    pub begin: usize,
    /// Pad after.
    pub end: usize,
    /// Output length.
    pub out: usize,
}

/// Spatial ranks a window may have.
const RANKS: [usize; 2] = [2, 3];

/// The largest kernel size, stride, dilation or pad a window takes (what a
/// `u32` shader parameter holds); larger values are attribute errors.
const MAX_WINDOW: i64 = u32::MAX as i64;

/// A list attribute of `len` values each at least `min` (`default` each when absent).
fn list(attrs: &Attrs, name: &str, len: usize, min: i64, default: usize) -> Result<Vec<usize>, OpError> {
    if !attrs.contains_key(name) {
        return Ok(vec![default; len]);
    }
    let v = attr_ints(attrs, name)?;
    if v.len() != len || v.iter().any(|&x| x < min || x > MAX_WINDOW) {
        return Err(OpError::Attribute {
            name: name.into(),
            message: format!("{v:?} must be {len} integers from {min} to {MAX_WINDOW}"),
        });
    }
    Ok(v.iter().map(|&x| x as usize).collect())
}

impl Window {
    /// Reads the ONNX attributes (`kernel_shape`, `strides`, `dilations`,
    /// `pads`, `auto_pad`, `ceil_mode`). The number of spatial axes (2 or 3)
    /// comes from `kernel_shape`, else from the other lists, else 2.
    pub fn from_attrs(attrs: &Attrs, kernel_required: bool) -> Result<Self, OpError> {
        let given = |name: &str, per_axis: usize| -> Result<Option<usize>, OpError> {
            if attrs.contains_key(name) {
                Ok(Some(attr_ints(attrs, name)?.len() / per_axis))
            } else {
                Ok(None)
            }
        };
        let rank = match given("kernel_shape", 1)? {
            Some(r) => r,
            None => given("strides", 1)?
                .or(given("dilations", 1)?)
                .or(given("pads", 2)?)
                .unwrap_or(2),
        };
        if !RANKS.contains(&rank) {
            return Err(OpError::Attribute {
                name: "kernel_shape".into(),
                message: format!("only 2-D and 3-D windows are supported; this one has {rank} axes"),
            });
        }
        let kernel = if attrs.contains_key("kernel_shape") || kernel_required {
            list(attrs, "kernel_shape", rank, 1, 0).and_then(|k| {
                if k.is_empty() || k.contains(&0) {
                    Err(OpError::Attribute {
                        name: "kernel_shape".into(),
                        message: "is required".into(),
                    })
                } else {
                    Ok(k)
                }
            })?
        } else {
            Vec::new()
        };
        Ok(Self {
            kernel,
            strides: list(attrs, "strides", rank, 1, 1)?,
            dilations: list(attrs, "dilations", rank, 1, 1)?,
            pads: list(attrs, "pads", 2 * rank, 0, 0)?,
            auto_pad: AutoPad::parse(attr_str(attrs, "auto_pad", "NOTSET")?)?,
            ceil_mode: attr_i64(attrs, "ceil_mode", Some(0))? != 0,
        })
    }

    /// The number of spatial axes (2 or 3).
    pub fn rank(&self) -> usize {
        self.strides.len()
    }

    /// Writes the attributes back (round-trips through [`Window::from_attrs`]).
    pub fn write(&self, a: &mut Attrs) {
        if !self.kernel.is_empty() {
            a.insert("kernel_shape".into(), self.kernel.clone().into());
        }
        a.insert("strides".into(), self.strides.clone().into());
        a.insert("dilations".into(), self.dilations.clone().into());
        a.insert("pads".into(), self.pads.clone().into());
        a.insert("auto_pad".into(), self.auto_pad.name().into());
        if self.ceil_mode {
            a.insert("ceil_mode".into(), 1.into());
        }
    }

    /// Padding and output length along spatial axis `i` (0 = the first
    /// spatial axis) for an input of length `len` and a kernel of `k`.
    pub fn axis(&self, i: usize, len: usize, k: usize) -> Result<Axis, OpError> {
        let rank = self.rank();
        if i >= rank {
            return Err(OpError::Shape(format!("spatial axis {i} of a {rank}-D window")));
        }
        let (s, d) = (self.strides[i], self.dilations[i]);
        let too_long = || {
            OpError::Shape(format!(
                "spatial axis {i}: input length {len}, kernel {k}, dilation {d} and pads {:?} overflow a {}-bit size",
                (self.pads.get(i), self.pads.get(i + rank)),
                usize::BITS
            ))
        };
        let span = (k.max(1) - 1)
            .checked_mul(d)
            .and_then(|x| x.checked_add(1))
            .ok_or_else(too_long)?;
        let (begin, end) = match self.auto_pad {
            AutoPad::NotSet => (self.pads[i], self.pads[i + rank]),
            AutoPad::Valid => (0, 0),
            AutoPad::SameUpper | AutoPad::SameLower => {
                let out = len.div_ceil(s);
                let total = out
                    .saturating_sub(1)
                    .checked_mul(s)
                    .and_then(|x| x.checked_add(span))
                    .ok_or_else(too_long)?
                    .saturating_sub(len);
                if self.auto_pad == AutoPad::SameUpper {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                }
            }
        };
        let padded = len
            .checked_add(begin)
            .and_then(|x| x.checked_add(end))
            .ok_or_else(too_long)?;
        if padded < span {
            return Err(OpError::Shape(format!(
                "the window spans {span} but the padded input is only {padded} long"
            )));
        }
        let mut out = if self.ceil_mode {
            (padded - span).div_ceil(s) + 1
        } else {
            (padded - span) / s + 1
        };
        // A last window that starts in the end padding is dropped.
        if self.ceil_mode && (out - 1) * s >= len + begin {
            out -= 1;
        }
        Ok(Axis { begin, end, out })
    }
}

/// `Conv` (2-D, NCHW): inputs `x [N, C, H, W]`, `w [M, C/group, kH, kW]`,
/// optional `b [M]`; output `[N, M, oH, oW]`.
#[derive(Clone, Debug)]
pub struct Conv {
    /// Window geometry (`kernel` may be empty: the weight gives it).
    pub window: Window,
    /// Number of groups.
    pub group: usize,
}

/// A Conv weight `[m, cg, kh, kw]` packed per group, each group's
/// `[m/group, cg·kh·kw]` rows a [`PackedLhs`]; `relu` when a ReLU that
/// reads only this Conv runs in its epilogue (see [`Conv::with_relu`]);
/// `pool` when a MaxPool that alone reads the result runs in the same pass
/// (see [`Conv::with_max_pool`]).
struct PreparedConv {
    shape: [usize; 4],
    groups: Arc<[PackedLhs]>,
    relu: bool,
    pool: Option<Pool>,
}

struct ConvPlan {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    m: usize,
    cg: usize,
    kh: usize,
    kw: usize,
    y: Axis,
    x: Axis,
}

impl Conv {
    fn plan(&self, x: &[usize], w: &[usize], b: Option<&[usize]>) -> Result<ConvPlan, OpError> {
        if x.len() != 4 || w.len() != 4 {
            return Err(OpError::Shape(format!(
                "needs x [N, C, H, W] and w [M, C/group, kH, kW] (2-D only); got x {x:?}, w {w:?}"
            )));
        }
        let g = self.group;
        let (m, cg, kh, kw) = (w[0], w[1], w[2], w[3]);
        if g == 0 || cg.checked_mul(g) != Some(x[1]) || m % g != 0 {
            return Err(OpError::Shape(format!(
                "x has {} channels and w is {w:?} with group {g}: need C = {cg}·group and M divisible by group",
                x[1]
            )));
        }
        if !self.window.kernel.is_empty() && self.window.kernel != [kh, kw] {
            return Err(OpError::Shape(format!(
                "kernel_shape {:?} does not match the weight {w:?}",
                self.window.kernel
            )));
        }
        if let Some(b) = b {
            if b != [m] {
                return Err(OpError::Shape(format!("bias is {b:?}; it must be [{m}]")));
            }
        }
        Ok(ConvPlan {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            m,
            cg,
            kh,
            kw,
            y: self.window.axis(0, x[2], kh)?,
            x: self.window.axis(1, x[3], kw)?,
        })
    }

    /// The geometry for [`conv2d`].
    fn shape(&self, p: &ConvPlan) -> ConvShape {
        let (s, d) = (&self.window.strides, &self.window.dilations);
        ConvShape {
            n: p.n,
            c: p.c,
            m: p.m,
            group: self.group,
            geom: Im2col {
                h: p.h,
                w: p.w,
                kh: p.kh,
                kw: p.kw,
                s: [s[0], s[1]],
                d: [d[0], d[1]],
                pad: [p.y.begin, p.x.begin],
                oh: p.y.out,
                ow: p.x.out,
            },
        }
    }

    /// `prepared` (what [`Op::prepare_cpu`] returned) with ReLU applied in
    /// the GEMM's epilogue: [`Op::cpu_prepared`] then returns
    /// `Relu(Conv(x))`, the CPU backend's fusion of a Conv and the Relu that
    /// alone reads it. `None` when `prepared` is not this op's.
    pub fn with_relu(&self, prepared: &Prepared) -> Option<Prepared> {
        let pc = prepared.0.downcast_ref::<PreparedConv>()?;
        Some(Prepared(Arc::new(PreparedConv {
            shape: pc.shape,
            groups: Arc::clone(&pc.groups),
            relu: true,
            pool: pc.pool.clone(),
        })))
    }

    /// `prepared` with `pool` (a 2-D MaxPool without an `Indices` output)
    /// applied to the result: [`Op::cpu_prepared`] then returns
    /// `pool(Conv(x))` (after the ReLU, when one is folded in), the CPU
    /// backend's fusion of a Conv and the MaxPool that alone reads it. A
    /// 2×2, stride-2 pool without padding runs in the convolution's pass
    /// where the direct kernel takes the convolution
    /// ([`conv2d_max_pool2`]); any other runs the pool's own CPU path on the
    /// convolution's result. `None` when `prepared` is not this op's or
    /// `pool` is not such a MaxPool.
    pub fn with_max_pool(&self, prepared: &Prepared, pool: &Pool) -> Option<Prepared> {
        let pc = prepared.0.downcast_ref::<PreparedConv>()?;
        if !pool.max || pool.indices || pool.window.rank() != 2 || pc.pool.is_some() {
            return None;
        }
        Some(Prepared(Arc::new(PreparedConv {
            shape: pc.shape,
            groups: Arc::clone(&pc.groups),
            relu: pc.relu,
            pool: Some(pool.clone()),
        })))
    }

    fn bias<'a>(&self, inputs: &[&'a Tensor]) -> Result<Option<&'a [f32]>, OpError> {
        if inputs.len() == 3 {
            Ok(Some(f32_input(inputs, 2)?))
        } else {
            Ok(None)
        }
    }
}

impl Op for Conv {
    fn op_type(&self) -> &'static str {
        "Conv"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        self.window.write(&mut a);
        a.insert("group".into(), self.group.into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3 (x, w, optional b)")?;
        check_f32(inputs)?;
        let (x, w) = (&inputs[0], &inputs[1]);
        let ws = w
            .concrete_shape()
            .ok_or_else(|| OpError::Shape(format!("the weight's shape must be known, got {}", w.shape_string())))?;
        if x.rank() != 4 || ws.len() != 4 {
            return Err(OpError::Shape(format!(
                "needs x [N, C, H, W] and w [M, C/group, kH, kW] (2-D only); got x {}, w {ws:?}",
                x.shape_string()
            )));
        }
        let known = |d: &Dim, what: &str| {
            d.known()
                .ok_or_else(|| OpError::Shape(format!("the input's {what} must be known, got {}", x.shape_string())))
        };
        let xs = [
            1,
            known(&x.shape[1], "channels")?,
            known(&x.shape[2], "height")?,
            known(&x.shape[3], "width")?,
        ];
        let b = inputs.get(2).and_then(|b| b.concrete_shape());
        let p = self.plan(&xs, &ws, b.as_deref())?;
        Ok(vec![ValueType {
            dtype: x.dtype,
            shape: vec![
                x.shape[0].clone(),
                Dim::Known(p.m),
                Dim::Known(p.y.out),
                Dim::Known(p.x.out),
            ],
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3 (x, w, optional b)")?;
        let p = self.plan(inputs[0].shape(), inputs[1].shape(), inputs.get(2).map(|b| b.shape()))?;
        let (x, w, b) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?, self.bias(inputs)?);
        let (s, d) = (&self.window.strides, &self.window.dilations);
        let mg = p.m / self.group;
        let (oh, ow) = (p.y.out, p.x.out);
        let mut y = vec![0.0f32; p.n * p.m * oh * ow];
        for n in 0..p.n {
            for m in 0..p.m {
                let g = m / mg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = b.map_or(0.0, |b| b[m] as f64);
                        for ci in 0..p.cg {
                            let c = g * p.cg + ci;
                            for ky in 0..p.kh {
                                let iy = (oy * s[0] + ky * d[0]) as isize - p.y.begin as isize;
                                if iy < 0 || iy >= p.h as isize {
                                    continue;
                                }
                                for kx in 0..p.kw {
                                    let ix = (ox * s[1] + kx * d[1]) as isize - p.x.begin as isize;
                                    if ix < 0 || ix >= p.w as isize {
                                        continue;
                                    }
                                    let xv = x[((n * p.c + c) * p.h + iy as usize) * p.w + ix as usize];
                                    let wv = w[((m * p.cg + ci) * p.kh + ky) * p.kw + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((n * p.m + m) * oh + oy) * ow + ox] = acc as f32;
                    }
                }
            }
        }
        Ok(vec![Tensor::from_vec(vec![p.n, p.m, oh, ow], y)?])
    }

    /// im2col per image and group, then one `sgemm` per group.
    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3 (x, w, optional b)")?;
        let p = self.plan(inputs[0].shape(), inputs[1].shape(), inputs.get(2).map(|b| b.shape()))?;
        let (x, w, b) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?, self.bias(inputs)?);
        let (s, d) = (&self.window.strides, &self.window.dilations);
        let mg = p.m / self.group;
        let (oh, ow) = (p.y.out, p.x.out);
        let (kk, pix) = (p.cg * p.kh * p.kw, oh * ow);
        let mut y = vec![0.0f32; p.n * p.m * pix];
        // Images go through im2col together, `chunk` at a time, so one gemm
        // of [mg, kk] x [kk, chunk·pix] per group does the work of `chunk`
        // small ones (the digits CNN's 8x8 images make 64-column products
        // otherwise). The column buffer stays under COL_MAX floats.
        const COL_MAX: usize = 1 << 22;
        let chunk = (COL_MAX / (kk * pix).max(1)).clamp(1, p.n.max(1));
        let mut col = vec![0.0f32; kk * chunk * pix];
        let mut out = vec![0.0f32; mg * chunk * pix];
        for n0 in (0..p.n).step_by(chunk) {
            let nb = chunk.min(p.n - n0);
            let cols = nb * pix;
            for g in 0..self.group {
                // Row r = (ci, ky, kx) of the column matrix holds, for every
                // image of the chunk, that tap of each output pixel.
                let fill = |r: usize, row: &mut [f32]| {
                    let (ci, ky, kx) = (r / (p.kh * p.kw), (r / p.kw) % p.kh, r % p.kw);
                    let c = g * p.cg + ci;
                    // What depends only on the tap: ix = ox·s + off lies in
                    // [0, w) for ox in [lo, hi); the input row of each oy.
                    let off = (kx * d[1]) as isize - p.x.begin as isize;
                    let st = s[1] as isize;
                    let lo = if off >= 0 { 0 } else { ((-off + st - 1) / st) as usize }.min(ow);
                    let hi = (((p.w as isize - off).max(0) + st - 1) / st).clamp(lo as isize, ow as isize) as usize;
                    let rows: Vec<Option<usize>> = (0..oh)
                        .map(|oy| {
                            let iy = (oy * s[0] + ky * d[0]) as isize - p.y.begin as isize;
                            (iy >= 0 && iy < p.h as isize).then_some(iy as usize)
                        })
                        .collect();
                    for (i, img) in row.chunks_mut(pix.max(1)).enumerate() {
                        let plane = &x[((n0 + i) * p.c + c) * p.h * p.w..][..p.h * p.w];
                        for (dst, iy) in img.chunks_mut(ow.max(1)).zip(&rows) {
                            let Some(iy) = *iy else {
                                dst.fill(0.0);
                                continue;
                            };
                            let src = &plane[iy * p.w..][..p.w];
                            dst[..lo].fill(0.0);
                            dst[hi..].fill(0.0);
                            if st == 1 {
                                let a = (lo as isize + off) as usize;
                                for (v, &x) in dst[lo..hi].iter_mut().zip(&src[a..]) {
                                    *v = x;
                                }
                            } else {
                                for (ox, v) in (lo..hi).zip(&mut dst[lo..hi]) {
                                    *v = src[(ox as isize * st + off) as usize];
                                }
                            }
                        }
                    }
                };
                let col = &mut col[..kk * cols];
                if kk * cols >= 1 << 15 {
                    col.par_chunks_mut(cols.max(1))
                        .enumerate()
                        .for_each(|(r, row)| fill(r, row));
                } else {
                    col.chunks_mut(cols.max(1))
                        .enumerate()
                        .for_each(|(r, row)| fill(r, row));
                }
                let out = &mut out[..mg * cols];
                if let Some(b) = b {
                    for (mi, r) in out.chunks_mut(cols.max(1)).enumerate() {
                        r.fill(b[g * mg + mi]);
                    }
                }
                linalg::sgemm(
                    MatRef::row_major(&w[g * mg * kk..][..mg * kk], mg, kk),
                    MatRef::row_major(col, kk, cols),
                    out,
                    b.is_some(),
                )?;
                // [mg, chunk, pix] -> y[n0 + i, g·mg + mi, pix].
                for (mi, r) in out.chunks(cols.max(1)).enumerate() {
                    for (i, img) in r.chunks(pix.max(1)).enumerate() {
                        y[((n0 + i) * p.m + g * mg + mi) * pix..][..pix].copy_from_slice(img);
                    }
                }
            }
        }
        Ok(vec![Tensor::from_vec(vec![p.n, p.m, oh, ow], y)?])
    }

    /// The weight packed per group for [`conv2d`] (see [`PreparedConv`]).
    fn prepare_cpu(&self, consts: &[Option<&Tensor>]) -> Option<Prepared> {
        let w = (*consts.get(1)?)?;
        let (&[m, cg, kh, kw], Ok(data)) = (w.shape(), w.as_f32()) else {
            return None;
        };
        let g = self.group;
        if g == 0 || m % g != 0 {
            return None;
        }
        let (mg, kk) = (m / g, cg * kh * kw);
        // 3×3 windows with unit strides and dilations in one group also get
        // the Winograd form.
        let unit = |v: &[usize]| v.iter().all(|&s| s == 1);
        let winograd = g == 1 && [kh, kw] == [3, 3] && unit(&self.window.strides) && unit(&self.window.dilations);
        let groups: Arc<[PackedLhs]> = (0..g)
            .map(|gi| {
                let a = &data[gi * mg * kk..][..mg * kk];
                let p = PackedLhs::new(a, mg, kk, kk);
                if winograd {
                    p.with_winograd(a, cg)
                } else {
                    p
                }
            })
            .collect();
        Some(Prepared(Arc::new(PreparedConv {
            shape: [m, cg, kh, kw],
            groups,
            relu: false,
            pool: None,
        })))
    }

    /// [`conv2d`] on the packed weight: a GEMM per (image, pixel tile,
    /// group) with the bias in its epilogue.
    fn cpu_prepared(&self, inputs: &[&Tensor], prepared: &Prepared) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3 (x, w, optional b)")?;
        let p = self.plan(inputs[0].shape(), inputs[1].shape(), inputs.get(2).map(|b| b.shape()))?;
        let pc = prepared.0.downcast_ref::<PreparedConv>();
        let Some(pc) = pc.filter(|c| c.shape == [p.m, p.cg, p.kh, p.kw] && c.groups.len() == self.group) else {
            let mut y = self.cpu(inputs)?;
            if pc.is_some_and(|c| c.relu) {
                y = relu_outputs(y)?;
            }
            return match pc.and_then(|c| c.pool.as_ref()) {
                Some(pool) => pool.cpu(&[&y[0]]),
                None => Ok(y),
            };
        };
        let (x, b) = (f32_input(inputs, 0)?, self.bias(inputs)?);
        let s = self.shape(&p);
        if let Some(pool) = &pc.pool {
            if let Some(shape) = pairs_pooled(pool, &p) {
                if let Some(y) = conv2d_max_pool2(&s, x, &pc.groups, b, pc.relu) {
                    return Ok(vec![Tensor::from_vec(shape, y)?]);
                }
            }
            let y = conv2d(&s, x, &pc.groups, b, pc.relu);
            return pool.cpu(&[&Tensor::from_vec(vec![p.n, p.m, p.y.out, p.x.out], y)?]);
        }
        let y = conv2d(&s, x, &pc.groups, b, pc.relu);
        Ok(vec![Tensor::from_vec(vec![p.n, p.m, p.y.out, p.x.out], y)?])
    }

    /// Gradients for `x`, `w` and `b` (the transposed convolution of `dy`
    /// with `w`, the correlation of `x` with `dy`, and the sum of `dy`), in
    /// f64 loops mirroring the reference.
    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3 (x, w, optional b)")?;
        let p = self.plan(inputs[0].shape(), inputs[1].shape(), inputs.get(2).map(|b| b.shape()))?;
        let (x, w) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let dy = f32_input(grads, 0)?;
        let (s, d) = (&self.window.strides, &self.window.dilations);
        let mg = p.m / self.group;
        let (oh, ow) = (p.y.out, p.x.out);
        if dy.len() != p.n * p.m * oh * ow {
            return Err(OpError::Shape(format!(
                "the output gradient has {} values, not {}",
                dy.len(),
                p.n * p.m * oh * ow
            )));
        }
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; w.len()];
        let mut db = vec![0.0f64; p.m];
        for n in 0..p.n {
            for m in 0..p.m {
                let g = m / mg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let gy = dy[((n * p.m + m) * oh + oy) * ow + ox] as f64;
                        db[m] += gy;
                        for ci in 0..p.cg {
                            let c = g * p.cg + ci;
                            for ky in 0..p.kh {
                                let iy = (oy * s[0] + ky * d[0]) as isize - p.y.begin as isize;
                                if iy < 0 || iy >= p.h as isize {
                                    continue;
                                }
                                for kx in 0..p.kw {
                                    let ix = (ox * s[1] + kx * d[1]) as isize - p.x.begin as isize;
                                    if ix < 0 || ix >= p.w as isize {
                                        continue;
                                    }
                                    let xi = ((n * p.c + c) * p.h + iy as usize) * p.w + ix as usize;
                                    let wi = ((m * p.cg + ci) * p.kh + ky) * p.kw + kx;
                                    dx[xi] += w[wi] as f64 * gy;
                                    dw[wi] += x[xi] as f64 * gy;
                                }
                            }
                        }
                    }
                }
            }
        }
        let f = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect::<Vec<f32>>();
        let mut out = vec![
            Some(Tensor::from_vec(inputs[0].shape().to_vec(), f(dx))?),
            Some(Tensor::from_vec(inputs[1].shape().to_vec(), f(dw))?),
        ];
        if inputs.len() == 3 {
            out.push(Some(Tensor::from_vec(vec![p.m], f(db))?));
        }
        Ok(out)
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        match inputs {
            [x, w, ..] if x.len() == 4 && w.len() == 4 => match self.plan(x, w, None) {
                Ok(p) => 2 * (p.n * p.m * p.y.out * p.x.out * p.cg * p.kh * p.kw) as u64,
                Err(_) => 0,
            },
            _ => 0,
        }
    }
}

/// The output shape of `pool` on this convolution's output where every
/// window is 2×2 with stride 2 and lies inside it (`[n, m, oh/2, ow/2]`):
/// what [`conv2d_max_pool2`] computes. `None` for any other window.
fn pairs_pooled(pool: &Pool, p: &ConvPlan) -> Option<Vec<usize>> {
    let g = pool.geom(&[p.y.out, p.x.out]).ok()?;
    let (oh, ow) = (p.y.out / 2, p.x.out / 2);
    let pairs = g.k[1..] == [2, 2]
        && g.s[1..] == [2, 2]
        && g.d[1..] == [1, 1]
        && g.ax[1].begin == 0
        && g.ax[2].begin == 0
        && g.out()[1..] == [oh, ow];
    pairs.then(|| vec![p.n, p.m, oh, ow])
}

/// Each output with ReLU applied (a fused Conv's fallback).
fn relu_outputs(outputs: Vec<Tensor>) -> Result<Vec<Tensor>, OpError> {
    outputs
        .into_iter()
        .map(|t| {
            let mut y = t.as_f32()?.to_vec();
            linalg::relu_in_place(&mut y);
            Ok(Tensor::from_vec(t.shape().to_vec(), y)?)
        })
        .collect()
}

fn conv_case(rng: &mut CaseRng, x: [usize; 4], m: usize, k: [usize; 2], group: usize, attrs: Attrs) -> OpCase {
    let mut a = attrs;
    a.insert("group".into(), group.into());
    let conv = build_conv(&a).unwrap_or_else(|e| unreachable!("case attributes are valid: {e}"));
    let inputs = vec![
        rng.tensor(&x, -1.0, 1.0),
        rng.tensor(&[m, x[1] / group, k[0], k[1]], -1.0, 1.0),
        rng.tensor(&[m], -1.0, 1.0),
    ];
    OpCase::new(format!("conv x{x:?} m{m} k{k:?} g{group} {a:?}"), conv, inputs)
}

fn build_conv(attrs: &Attrs) -> Result<Arc<dyn Op>, OpError> {
    let group = attr_i64(attrs, "group", Some(1))?;
    if group < 1 {
        return Err(OpError::Attribute {
            name: "group".into(),
            message: format!("{group} must be at least 1"),
        });
    }
    let window = Window::from_attrs(attrs, false)?;
    if window.rank() != 2 {
        return Err(OpError::Attribute {
            name: "kernel_shape".into(),
            message: format!("Conv takes 2-D windows only; this one has {} axes", window.rank()),
        });
    }
    Ok(Arc::new(Conv {
        window,
        group: group as usize,
    }))
}

fn attrs(pairs: &[(&str, serde_json::Value)]) -> Attrs {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// `Conv`: attributes `kernel_shape`, `pads`, `strides`, `dilations`, `group`, `auto_pad`.
pub const CONV: OpDef = OpDef {
    op_type: "Conv",
    build: build_conv,
    cases: || {
        let mut rng = CaseRng::new(41);
        vec![
            conv_case(&mut rng, [1, 1, 5, 5], 1, [3, 3], 1, Attrs::new()),
            conv_case(
                &mut rng,
                [2, 3, 17, 13],
                5,
                [3, 3],
                1,
                attrs(&[("pads", vec![1, 1, 1, 1].into())]),
            ),
            conv_case(
                &mut rng,
                [1, 4, 9, 7],
                6,
                [3, 2],
                2,
                attrs(&[("strides", vec![2, 1].into()), ("dilations", vec![1, 2].into())]),
            ),
            conv_case(
                &mut rng,
                [1, 3, 8, 8],
                3,
                [3, 3],
                3,
                attrs(&[("auto_pad", "SAME_UPPER".into())]),
            ),
            conv_case(
                &mut rng,
                [3, 2, 7, 5],
                4,
                [2, 2],
                1,
                attrs(&[("pads", vec![1, 0, 0, 2].into()), ("strides", vec![2, 2].into())]),
            ),
        ]
    },
    sample: |rng| {
        let group = rng.range(1, 2);
        let c = group * rng.range(1, 3);
        let m = group * rng.range(1, 3);
        let (h, w) = (rng.range(3, 12), rng.range(3, 12));
        let k = [rng.range(1, 3), rng.range(1, 3)];
        let s = rng.range(1, 2);
        let p = rng.range(0, 1);
        let a = attrs(&[("strides", vec![s, s].into()), ("pads", vec![p, 0, 0, p].into())]);
        let n = rng.range(1, 2);
        conv_case(rng, [n, c, h, w], m, k, group, a)
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The prepared path (packed weight, im2col tiles, threads over images
    /// and tiles) against the f64 reference loops, on shapes that are not
    /// multiples of the kernel's tiles: groups, depthwise, 1×1, strides,
    /// dilations, asymmetric pads and batches large enough to run in parallel.
    #[test]
    fn prepared_matches_reference() {
        let mut rng = CaseRng::new(7);
        let pads = |p: [usize; 4]| ("pads", serde_json::Value::from(p.to_vec()));
        let strides = |s: [usize; 2]| ("strides", serde_json::Value::from(s.to_vec()));
        let dil = |d: [usize; 2]| ("dilations", serde_json::Value::from(d.to_vec()));
        let cases = [
            conv_case(&mut rng, [1, 1, 28, 28], 32, [3, 3], 1, attrs(&[pads([1, 1, 1, 1])])),
            conv_case(&mut rng, [5, 7, 13, 11], 9, [3, 3], 1, attrs(&[pads([1, 0, 2, 1])])),
            conv_case(
                &mut rng,
                [3, 6, 10, 9],
                8,
                [3, 2],
                2,
                attrs(&[strides([2, 1]), dil([1, 2])]),
            ),
            conv_case(&mut rng, [2, 8, 9, 9], 8, [3, 3], 8, attrs(&[pads([1, 1, 1, 1])])),
            conv_case(
                &mut rng,
                [4, 6, 12, 12],
                12,
                [3, 3],
                6,
                attrs(&[strides([2, 2]), pads([0, 1, 1, 0])]),
            ),
            conv_case(&mut rng, [3, 16, 7, 7], 20, [1, 1], 1, Attrs::new()),
            conv_case(&mut rng, [2, 16, 7, 9], 12, [1, 1], 4, Attrs::new()),
            conv_case(&mut rng, [2, 5, 9, 9], 7, [1, 1], 1, attrs(&[strides([2, 2])])),
            conv_case(
                &mut rng,
                [2, 3, 11, 11],
                4,
                [5, 5],
                1,
                attrs(&[dil([2, 2]), pads([3, 3, 3, 3])]),
            ),
            conv_case(&mut rng, [1, 64, 9, 9], 70, [3, 3], 1, attrs(&[pads([1, 1, 1, 1])])),
            conv_case(&mut rng, [64, 8, 4, 4], 16, [3, 3], 1, attrs(&[pads([1, 1, 1, 1])])),
            conv_case(
                &mut rng,
                [17, 4, 6, 5],
                6,
                [2, 3],
                2,
                attrs(&[pads([0, 2, 1, 0]), dil([2, 1])]),
            ),
            conv_case(
                &mut rng,
                [2, 2, 3, 3],
                3,
                [3, 3],
                1,
                attrs(&[pads([4, 4, 4, 4]), strides([3, 3])]),
            ),
        ];
        for c in &cases {
            let refs: Vec<&Tensor> = c.inputs.iter().collect();
            let consts: Vec<Option<&Tensor>> = refs.iter().enumerate().map(|(i, t)| (i > 0).then_some(*t)).collect();
            let p =
                c.op.prepare_cpu(&consts)
                    .unwrap_or_else(|| panic!("{}: not prepared", c.name));
            let want = c.op.reference(&refs).unwrap();
            let kk = (refs[1].numel() / refs[1].shape()[0]) as f32;
            for (what, inputs) in [("with bias", &refs[..]), ("no bias", &refs[..2])] {
                let got = c.op.cpu_prepared(inputs, &p).unwrap();
                let want = if inputs.len() == 3 {
                    want.clone()
                } else {
                    c.op.reference(inputs).unwrap()
                };
                assert_eq!(got[0].shape(), want[0].shape(), "{}", c.name);
                for (i, (g, w)) in got[0]
                    .as_f32()
                    .unwrap()
                    .iter()
                    .zip(want[0].as_f32().unwrap())
                    .enumerate()
                {
                    assert!(
                        (g - w).abs() <= 1e-5 * kk.sqrt() * (1.0 + w.abs()),
                        "{} {what}: y[{i}] = {g}, want {w}",
                        c.name
                    );
                }
            }
        }
    }
}
