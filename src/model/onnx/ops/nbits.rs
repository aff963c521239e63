//! onnxruntime's `com.microsoft.MatMulNBits`: `Y = A · dequant(B)ᵀ (+ bias)`
//! with `B` in blocks of `block_size` inputs, `bits` per weight, a scale per
//! block and a zero point per block (`2^(bits-1)` when absent):
//! `w = (q - zero) · scale`.
//!
//! 4-bit blocks of 32, 64 or 128 whose scales (and `-zero · scale`, to f32
//! rounding) are exact in f16 stay packed as an int4 [`QLinear`] (wginfer's int4 layout is the
//! same nibble order); anything else (8 bits, other block sizes, f32 scales)
//! is dequantized at import to an f32 [`Linear`], so the imported graph
//! computes what onnxruntime computes.

use std::sync::Arc;

use half::f16;

use super::super::context::{skip, Ctx, OnnxNode, Skip, Val};
use super::Build;
use crate::ops::linear::Linear;
use crate::ops::qlinear::QLinear;
use crate::quant::WeightFormat;
use crate::tensor::{DType, Tensor};

/// The `com.microsoft` ops the importer maps.
pub(super) static MS_OPS: &[(&str, Build)] = &[("MatMulNBits", matmul_nbits)];

/// The attributes and constant inputs of one `MatMulNBits` node.
struct NBits {
    k: usize,
    n: usize,
    bits: usize,
    block: usize,
    /// `B`'s bytes: `[N, blocks, block · bits / 8]`.
    q: Vec<u8>,
    /// `[N · blocks]`.
    scales: Vec<f32>,
    /// `[N · blocks]`, as numbers.
    zeros: Vec<f32>,
}

impl NBits {
    fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    /// The quantized value of weight `i` of row `r`.
    fn q_at(&self, r: usize, i: usize) -> u8 {
        let row = self.blocks() * self.block * self.bits / 8;
        let byte = self.q[r * row + i * self.bits / 8];
        match self.bits {
            8 => byte,
            _ => (byte >> (4 * (i % 2))) & 0xf,
        }
    }

    /// The f32 weight, `[N, K]`.
    fn dequantize(&self) -> Vec<f32> {
        let blocks = self.blocks();
        let mut w = Vec::with_capacity(self.n * self.k);
        for r in 0..self.n {
            for i in 0..self.k {
                let b = r * blocks + i / self.block;
                w.push((f32::from(self.q_at(r, i)) - self.zeros[b]) * self.scales[b]);
            }
        }
        w
    }

    /// As wginfer's int4 packed tensors when that is exact.
    fn int4(&self) -> Option<(WeightFormat, Vec<Tensor>)> {
        if self.bits != 4 || ![32, 64, 128].contains(&self.block) {
            return None;
        }
        let exact = |v: f32| f16::from_f32(v).to_f32() == v;
        if !self.scales.iter().all(|&s| exact(s)) {
            return None;
        }
        let blocks = self.blocks();
        let rows = [self.n, blocks];
        let scale = Tensor::from_vec(rows.to_vec(), self.scales.iter().map(|&s| f16::from_f32(s)).collect()).ok()?;
        let q = Tensor::from_le_bytes(DType::U8, vec![self.n, blocks * self.block / 2], &self.q).ok()?;
        if self.zeros.iter().all(|&z| z == 8.0) {
            return Some((
                WeightFormat::Int4 {
                    block: self.block as u32,
                    with_min: false,
                },
                vec![q, scale],
            ));
        }
        // `-zero · scale` in f32 is off by an f32 rounding when the zero
        // point is a float `-min / scale` (as wginfer writes int4-min): a
        // minimum within a few f32 ulps of an f16 value is that value.
        let mins: Vec<f32> = self.zeros.iter().zip(&self.scales).map(|(z, s)| -z * s).collect();
        let near_f16 = |v: f32| (f16::from_f32(v).to_f32() - v).abs() <= v.abs() * f32::EPSILON * 4.0;
        if !mins.iter().all(|&m| near_f16(m)) {
            return None;
        }
        let min = Tensor::from_vec(rows.to_vec(), mins.iter().map(|&m| f16::from_f32(m)).collect()).ok()?;
        Some((
            WeightFormat::Int4 {
                block: self.block as u32,
                with_min: true,
            },
            vec![q, scale, min],
        ))
    }
}

fn matmul_nbits(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(3, 6)?;
    let nb = read(cx, n)?;
    let mut inputs = vec![n.ins[0].clone()];
    let base = cx.resolve(&n.ins[1]);
    let op: Arc<dyn crate::ops::Op> = match nb.int4() {
        Some((format, packed)) => {
            for (suffix, t) in format.tensor_names().iter().zip(packed) {
                let pname = format!("{base}.{suffix}");
                cx.formats.insert(pname.clone(), format.name());
                cx.set_const(&pname, t);
                inputs.push(pname);
            }
            Arc::new(QLinear {
                format,
                in_features: nb.k,
                out_features: nb.n,
            })
        }
        None => {
            let pname = format!("{base}.f32");
            cx.set_const(&pname, Tensor::from_vec(vec![nb.n, nb.k], nb.dequantize())?);
            inputs.push(pname);
            Arc::new(Linear)
        }
    };
    if let Some(b) = n.ins.get(5).filter(|b| !b.is_empty()) {
        let bt = cx.constant(b)?.to_f32_vec();
        if bt.len() != nb.n {
            return Err(skip(format!("bias has {} values; expected N = {}", bt.len(), nb.n)));
        }
        let bname = format!("{}.bias", cx.resolve(b));
        cx.set_const(&bname, Tensor::from_vec(vec![nb.n], bt)?);
        inputs.push(bname);
    }
    cx.emit(n.name, op, &inputs, std::slice::from_ref(n.out0()?))
}

/// Checks the attributes and reads the constant inputs.
fn read(cx: &Ctx<'_>, n: &OnnxNode<'_>) -> Result<NBits, Skip> {
    let attr = |name: &str| -> Result<usize, Skip> {
        let v = n.a.i(name, -1);
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| skip(format!("attribute {name} is {v}; it must be given and positive")))
    };
    let (k, nn, block) = (attr("K")?, attr("N")?, attr("block_size")?);
    let bits = n.a.i("bits", 4);
    if bits != 4 && bits != 8 {
        return Err(skip(format!("bits = {bits}: only 4 and 8 are supported")));
    }
    let bits = bits as usize;
    if block < 16 || !block.is_power_of_two() {
        return Err(skip(format!(
            "block_size {block}: it must be a power of two, at least 16"
        )));
    }
    if !matches!(cx.val(&n.ins[0])?, Val::Dyn(_)) {
        return Err(skip("input A must be computed at run time"));
    }
    let blocks = k.div_ceil(block);
    let cells = nn
        .checked_mul(blocks)
        .ok_or_else(|| skip(format!("N = {nn} × {blocks} blocks overflows")))?;
    let b = cx.constant(&n.ins[1])?;
    if b.dtype() != DType::U8 || Some(b.numel()) != cells.checked_mul(block * bits / 8) {
        return Err(skip(format!(
            "B must be uint8 [N, blocks, block_size · bits / 8] = [{nn}, {blocks}, {}]; got {}{:?}",
            block * bits / 8,
            b.dtype(),
            b.shape()
        )));
    }
    let scales = float_values(cx.constant(&n.ins[2])?, "scales")?;
    if scales.len() != cells {
        return Err(skip(format!(
            "scales has {} values; expected N × blocks = {cells}",
            scales.len()
        )));
    }
    let zeros = match n.ins.get(3).filter(|z| !z.is_empty()) {
        None => vec![(1u32 << (bits - 1)) as f32; cells],
        Some(z) => zero_points(cx.constant(z)?, nn, blocks, bits)?,
    };
    if let Some(g) = n.ins.get(4).filter(|g| !g.is_empty()) {
        let g = cx.constant(g)?.to_f32_vec();
        if g.len() != k || g.iter().enumerate().any(|(i, &v)| v != (i / block) as f32) {
            return Err(skip("g_idx reorders the inputs across blocks, which is not supported"));
        }
    }
    Ok(NBits {
        k,
        n: nn,
        bits,
        block,
        q: b.to_le_bytes(),
        scales,
        zeros,
    })
}

fn float_values(t: &Tensor, what: &str) -> Result<Vec<f32>, Skip> {
    match t.dtype() {
        DType::F32 | DType::F16 => Ok(t.to_f32_vec()),
        other => Err(skip(format!("{what} must be float32 or float16; got {other}"))),
    }
}

/// Zero points as numbers: packed `bits`-wide in uint8 (each row padded to
/// a whole byte), or floats of the scales' type.
fn zero_points(z: &Tensor, n: usize, blocks: usize, bits: usize) -> Result<Vec<f32>, Skip> {
    if z.dtype() != DType::U8 {
        let v = float_values(z, "zero_points")?;
        if v.len() != n * blocks {
            return Err(skip(format!(
                "zero_points has {} values; expected {}",
                v.len(),
                n * blocks
            )));
        }
        return Ok(v);
    }
    let row = (blocks * bits).div_ceil(8);
    let bytes = z.to_le_bytes();
    if bytes.len() != n * row {
        return Err(skip(format!(
            "uint8 zero_points has {} bytes; expected N × ceil(blocks · bits / 8) = {}",
            bytes.len(),
            n * row
        )));
    }
    Ok((0..n * blocks)
        .map(|i| {
            let (r, b) = (i / blocks, i % blocks);
            let byte = bytes[r * row + b * bits / 8];
            f32::from(if bits == 8 { byte } else { (byte >> (4 * (b % 2))) & 0xf })
        })
        .collect())
}
