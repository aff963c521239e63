//! Pooling over the two spatial axes of NCHW tensors: `MaxPool`,
//! `AveragePool` and `GlobalAveragePool`.

use std::any::Any;
use std::sync::Arc;

use rayon::prelude::*;

use super::conv::{Axis, Window};
use super::{attr_i64, check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::tensor::{Dim, Tensor, ValueType};

/// `MaxPool` or `AveragePool` (2-D).
#[derive(Clone, Debug)]
pub struct Pool {
    /// True for `MaxPool`.
    pub max: bool,
    /// Window geometry (`kernel` is required).
    pub window: Window,
    /// `AveragePool`: count padding positions in the divisor.
    pub count_include_pad: bool,
}

/// A pooling call's input data, its `[N, C, H, W]` shape and the two axes.
type Frame<'a> = (&'a [f32], &'a [usize], Axis, Axis);

impl Pool {
    /// Checks the single 4-D f32 input and plans both axes.
    fn frame<'a>(&self, inputs: &[&'a Tensor]) -> Result<Frame<'a>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let s = inputs[0].shape();
        if s.len() != 4 {
            return Err(OpError::Shape(format!("needs x [N, C, H, W]; got {s:?}")));
        }
        let x = f32_input(inputs, 0)?;
        let (ay, ax) = self.axes(s[2], s[3])?;
        Ok((x, s, ay, ax))
    }

    fn axes(&self, h: usize, w: usize) -> Result<(Axis, Axis), OpError> {
        let k = &self.window.kernel;
        if k.len() != 2 {
            return Err(OpError::Attribute {
                name: "kernel_shape".into(),
                message: "is required (2-D)".into(),
            });
        }
        Ok((self.window.axis(0, h, k[0])?, self.window.axis(1, w, k[1])?))
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
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        check_f32(inputs)?;
        let x = &inputs[0];
        if x.rank() != 4 {
            return Err(OpError::Shape(format!(
                "needs x [N, C, H, W] (2-D pooling only); got {}",
                x.shape_string()
            )));
        }
        let (h, w) = match (x.shape[2].known(), x.shape[3].known()) {
            (Some(h), Some(w)) => (h, w),
            _ => {
                return Err(OpError::Shape(format!(
                    "spatial sizes must be known, got {}",
                    x.shape_string()
                )))
            }
        };
        let (ay, ax) = self.axes(h, w)?;
        Ok(vec![ValueType {
            dtype: x.dtype,
            shape: vec![
                x.shape[0].clone(),
                x.shape[1].clone(),
                Dim::Known(ay.out),
                Dim::Known(ax.out),
            ],
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (x, s, ay, ax) = self.frame(inputs)?;
        let (nc, h, w) = (s[0] * s[1], s[2], s[3]);
        let (k, st, d) = (&self.window.kernel, self.window.strides, self.window.dilations);
        // The padded extent, for count_include_pad.
        let (ph_end, pw_end) = (h + ay.end, w + ax.end);
        let mut y = Vec::with_capacity(nc * ay.out * ax.out);
        for plane in 0..nc {
            let xp = &x[plane * h * w..][..h * w];
            for oy in 0..ay.out {
                for ox in 0..ax.out {
                    let mut best = f32::NEG_INFINITY;
                    let mut sum = 0.0f64;
                    let (mut count, mut padded) = (0usize, 0usize);
                    for ky in 0..k[0] {
                        let iy = (oy * st[0] + ky * d[0]) as isize - ay.begin as isize;
                        for kx in 0..k[1] {
                            let ix = (ox * st[1] + kx * d[1]) as isize - ax.begin as isize;
                            if iy < ph_end as isize && ix < pw_end as isize {
                                padded += 1;
                            }
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let v = xp[iy as usize * w + ix as usize];
                            best = best.max(v);
                            sum += v as f64;
                            count += 1;
                        }
                    }
                    y.push(if self.max {
                        best
                    } else {
                        let div = if self.count_include_pad { padded } else { count };
                        (sum / div.max(1) as f64) as f32
                    });
                }
            }
        }
        Ok(vec![Tensor::from_vec(vec![s[0], s[1], ay.out, ax.out], y)?])
    }

    /// The reference's arithmetic, with each axis's in-bounds taps listed
    /// once (no per-element bounds tests) and planes in parallel.
    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let (x, s, ay, ax) = self.frame(inputs)?;
        let (nc, h, w) = (s[0] * s[1], s[2], s[3]);
        let (k, st, d) = (&self.window.kernel, self.window.strides, self.window.dilations);
        // Per output position along one axis: the input indices its window
        // reads, and how many taps fall inside the padded extent.
        let taps = |out: usize, begin: usize, k: usize, st: usize, d: usize, n: usize, padded_end: usize| {
            (0..out)
                .map(|o| {
                    let at = |t: usize| (o * st + t * d) as isize - begin as isize;
                    let valid: Vec<usize> = (0..k)
                        .map(at)
                        .filter(|&i| i >= 0 && i < n as isize)
                        .map(|i| i as usize)
                        .collect();
                    let padded = (0..k).map(at).filter(|&i| i < padded_end as isize).count();
                    (valid, padded)
                })
                .collect::<Vec<_>>()
        };
        let ty = taps(ay.out, ay.begin, k[0], st[0], d[0], h, h + ay.end);
        let tx = taps(ax.out, ax.begin, k[1], st[1], d[1], w, w + ax.end);
        let out_plane = ay.out * ax.out;
        let mut y = vec![0.0f32; nc * out_plane];
        let plane_fn = |plane: usize, yp: &mut [f32]| {
            let xp = &x[plane * h * w..][..h * w];
            for (oy, (iys, py)) in ty.iter().enumerate() {
                for (ox, (ixs, px)) in tx.iter().enumerate() {
                    let v = if self.max {
                        let mut best = f32::NEG_INFINITY;
                        for &iy in iys {
                            for &ix in ixs {
                                best = best.max(xp[iy * w + ix]);
                            }
                        }
                        best
                    } else {
                        let mut sum = 0.0f64;
                        for &iy in iys {
                            for &ix in ixs {
                                sum += xp[iy * w + ix] as f64;
                            }
                        }
                        let div = if self.count_include_pad {
                            py * px
                        } else {
                            iys.len() * ixs.len()
                        };
                        (sum / div.max(1) as f64) as f32
                    };
                    yp[oy * ax.out + ox] = v;
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
        Ok(vec![Tensor::from_vec(vec![s[0], s[1], ay.out, ax.out], y)?])
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
        check_arity(inputs.len(), 1, 1, "1")?;
        let s = inputs[0].shape();
        if s.len() != 4 {
            return Err(OpError::Shape(format!("needs x [N, C, H, W]; got {s:?}")));
        }
        let x = f32_input(inputs, 0)?;
        let dy = f32_input(grads, 0)?;
        let (nc, h, w) = (s[0] * s[1], s[2], s[3]);
        let (ay, ax) = self.axes(h, w)?;
        if dy.len() != nc * ay.out * ax.out {
            return Err(OpError::Shape(format!(
                "the output gradient has {} values, not {}",
                dy.len(),
                nc * ay.out * ax.out
            )));
        }
        let (k, st, d) = (&self.window.kernel, self.window.strides, self.window.dilations);
        let (ph_end, pw_end) = (h + ay.end, w + ax.end);
        let mut dx = vec![0.0f32; x.len()];
        for plane in 0..nc {
            let base = plane * h * w;
            for oy in 0..ay.out {
                for ox in 0..ax.out {
                    let g = dy[(plane * ay.out + oy) * ax.out + ox];
                    let mut cells = Vec::new();
                    let mut padded = 0usize;
                    for ky in 0..k[0] {
                        let iy = (oy * st[0] + ky * d[0]) as isize - ay.begin as isize;
                        for kx in 0..k[1] {
                            let ix = (ox * st[1] + kx * d[1]) as isize - ax.begin as isize;
                            if iy < ph_end as isize && ix < pw_end as isize {
                                padded += 1;
                            }
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            cells.push(base + iy as usize * w + ix as usize);
                        }
                    }
                    if self.max {
                        let best = cells.iter().copied().fold(None, |b: Option<usize>, i| match b {
                            Some(j) if x[j] >= x[i] => Some(j),
                            _ => Some(i),
                        });
                        if let Some(i) = best {
                            dx[i] += g;
                        }
                    } else {
                        let div = if self.count_include_pad { padded } else { cells.len() };
                        let share = g / div.max(1) as f32;
                        for i in cells {
                            dx[i] += share;
                        }
                    }
                }
            }
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

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn build_pool(max: bool, attrs: &Attrs) -> Result<Arc<dyn Op>, OpError> {
    if attr_i64(attrs, "storage_order", Some(0))? != 0 {
        return Err(OpError::Attribute {
            name: "storage_order".into(),
            message: "only row-major (0) is supported".into(),
        });
    }
    Ok(Arc::new(Pool {
        max,
        window: Window::from_attrs(attrs, true)?,
        count_include_pad: attr_i64(attrs, "count_include_pad", Some(0))? != 0,
    }))
}

fn pool_cases(max: bool) -> Vec<OpCase> {
    let mut rng = CaseRng::new(if max { 51 } else { 52 });
    let geoms: [(&[usize], serde_json::Value); 4] = [
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
    ];
    geoms
        .iter()
        .map(|(s, a)| {
            let attrs: Attrs = a.as_object().cloned().unwrap_or_default();
            let op = build_pool(max, &attrs).unwrap_or_else(|e| unreachable!("case attributes are valid: {e}"));
            OpCase::new(format!("pool {s:?} {a}"), op, vec![rng.tensor(s, -1.0, 1.0)])
        })
        .collect()
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

/// `MaxPool`: `kernel_shape`, `pads`, `strides`, `dilations`, `auto_pad`, `ceil_mode`.
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

    fn as_any(&self) -> &dyn Any {
        self
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
