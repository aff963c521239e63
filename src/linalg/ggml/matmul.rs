//! `out = x·Wᵀ` on packed rows: the activations quantized to 16 bits per
//! group of 32 (up to [`PRECISE_MAX_N`] rows: decoding) or 8 bits per block
//! (more rows: prompts) once, then integer block dot products, output rows
//! split across rayon tasks, each weight row unpacked once for up to
//! [`TOKENS`] (8-bit) or [`TOKENS16`] (16-bit) activation rows.

use rayon::prelude::*;

use super::acts::{quantize_acts, quantize_acts16, QActs, QActs16, ROW_TILE16};
use super::{BlockFormat, QMatrix};

/// Activation rows one pass over a weight row serves, 8-bit activations.
pub const TOKENS: usize = 4;

/// Activation rows one pass over a weight row serves, 16-bit activations
/// (the tiles [`quantize_acts16`] lays them out in).
pub const TOKENS16: usize = ROW_TILE16;

const _: () = assert!(TOKENS <= TOKENS16, "rows_into's buffer holds TOKENS16 rows");

/// Rows of weights handled together (one pass per token group): small
/// enough to stay in L1 between the token groups.
const ROW_TILE: usize = 16;

/// Weight bytes of the rows one pass over the activation tiles takes (see
/// `QMatrix::rows_into`): a share of L2 that leaves room for the tiles.
const CHUNK_BYTES: usize = 64 << 10;

/// Weight bytes × activation rows below which a product runs on the calling
/// thread (a rayon fork costs more than it saves).
const SERIAL_WORK: usize = 48 << 10;

/// Activation rows up to which [`QMatrix::matmul`] quantizes the
/// activations to 16 bits ([`ActPrecision::Int16`]); more rows use 8 bits.
pub const PRECISE_MAX_N: usize = 7;

/// How the activations are quantized for the integer block products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActPrecision {
    /// 8 bits per block of the format ([`QActs`]), as llama.cpp does: an
    /// error of up to `max|x_block|/254` per value.
    Int8,
    /// 16 bits per group of 32 ([`QActs16`]): an error of up to
    /// `max|x_group|/65534` per value.
    Int16,
}

impl ActPrecision {
    /// The precision [`QMatrix::matmul`] uses for `n` activation rows.
    pub fn for_rows(n: usize) -> Self {
        if n <= PRECISE_MAX_N {
            Self::Int16
        } else {
            Self::Int8
        }
    }
}

/// An implementation of the block products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Plain Rust: every CPU.
    Portable,
    /// AVX2 with FMA and F16C (x86-64, chosen at run time).
    Avx2,
}

impl Kernel {
    /// Every kernel (whether or not this CPU runs it).
    pub const ALL: [Kernel; 2] = [Kernel::Portable, Kernel::Avx2];

    /// Whether this CPU runs the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => super::x86::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 => false,
        }
    }

    /// The fastest kernel this CPU runs.
    pub fn best() -> Self {
        if Kernel::Avx2.is_available() {
            Kernel::Avx2
        } else {
            Kernel::Portable
        }
    }

    /// `out[t] = row · x[t0 + t]` for `out.len()` rows of `acts`.
    fn dot_row(self, format: BlockFormat, row: &[u8], acts: &QActs, t0: usize, out: &mut [f32]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a kernel other than `Portable` runs only where
            // `is_available` said so (`QMatrix::matmul_rows` checks).
            Kernel::Avx2 => unsafe { super::x86::dot_row(format, row, acts, t0, out) },
            _ => super::portable::dot_row(format, row, acts, t0, out),
        }
    }

    /// `out[i·tn + t] = row_i · x[t0 + t]` for the packed rows in `rows`
    /// (`row_bytes` each) and `tn` rows of 16-bit `acts`.
    #[allow(clippy::too_many_arguments)]
    fn dot_rows16(
        self,
        format: BlockFormat,
        rows: &[u8],
        row_bytes: usize,
        acts: &QActs16,
        t0: usize,
        tn: usize,
        out: &mut [f32],
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a kernel other than `Portable` runs only where
            // `is_available` said so (`QMatrix::matmul_rows` checks).
            Kernel::Avx2 => unsafe { super::x86::dot_rows16(format, rows, row_bytes, acts, t0, tn, out) },
            _ => {
                for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(tn)) {
                    super::portable::dot_row16(format, row, acts, t0, o);
                }
            }
        }
    }
}

/// Quantized activation rows a kernel takes.
trait Acts: Sync {
    /// Activation rows a kernel call takes at most.
    const TILE: usize;
    /// Rows.
    fn rows(&self) -> usize;
    /// `out[i·tn + t] = row_i · x[t0 + t]` for the packed rows in `rows`
    /// (`row_bytes` each, at least 1) and activation rows `t0..t0 + tn`.
    #[allow(clippy::too_many_arguments)]
    fn dot(
        &self,
        kernel: Kernel,
        format: BlockFormat,
        rows: &[u8],
        row_bytes: usize,
        t0: usize,
        tn: usize,
        out: &mut [f32],
    );
}

impl Acts for QActs {
    const TILE: usize = TOKENS;
    fn rows(&self) -> usize {
        self.n
    }
    fn dot(
        &self,
        kernel: Kernel,
        format: BlockFormat,
        rows: &[u8],
        row_bytes: usize,
        t0: usize,
        tn: usize,
        out: &mut [f32],
    ) {
        for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(tn)) {
            kernel.dot_row(format, row, self, t0, o);
        }
    }
}

impl Acts for QActs16 {
    const TILE: usize = TOKENS16;
    fn rows(&self) -> usize {
        self.n
    }
    fn dot(
        &self,
        kernel: Kernel,
        format: BlockFormat,
        rows: &[u8],
        row_bytes: usize,
        t0: usize,
        tn: usize,
        out: &mut [f32],
    ) {
        kernel.dot_rows16(format, rows, row_bytes, self, t0, tn, out);
    }
}

/// The output buffer shared by tasks that write disjoint elements.
pub(super) struct Out(*mut f32, usize);
// SAFETY: tasks write disjoint elements (each owns a range of output rows;
// see `QMatrix::matmul_rows`), and nothing reads `out` while they run.
unsafe impl Sync for Out {}

impl Out {
    /// The whole of `out`, for tasks to write into.
    pub(super) fn new(out: &mut [f32]) -> Self {
        Self(out.as_mut_ptr(), out.len())
    }

    /// Writes `v` at `i..i + v.len()`.
    ///
    /// # Safety
    /// No other task writes or reads those elements concurrently.
    pub(super) unsafe fn write(&self, i: usize, v: &[f32]) {
        assert!(i + v.len() <= self.1, "output index out of range");
        // SAFETY: the elements are in bounds (checked above) and the
        // caller owns them; `v` is not in `out` (it is the caller's buffer).
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.0.add(i), v.len()) }
    }
}

impl QMatrix {
    /// `out[t][r] = Σ_c w[r][c]·x[t][c]` for `n` rows of `x` (`x` is
    /// `n × cols`, `out` is `n × rows`, both row-major), with the fastest
    /// kernel this CPU has and the activations quantized as
    /// [`ActPrecision::for_rows`] says: up to [`PRECISE_MAX_N`] rows to 16
    /// bits per group of 32 ([`QActs16`]; the result differs from the f32
    /// product of the dequantized weights by at most
    /// `Σ_groups Σ|w|·d_x/2` per output with `d_x = max|x_group|/32767`),
    /// more rows to 8 bits per block ([`QActs`]; `d_x = max|x_block|/127`).
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) {
        self.matmul_with(Kernel::best(), ActPrecision::for_rows(n), x, n, out);
    }

    /// [`QMatrix::matmul`] with a chosen kernel (the portable one where
    /// this CPU does not run `kernel`) and activation precision.
    pub fn matmul_with(&self, kernel: Kernel, precision: ActPrecision, x: &[f32], n: usize, out: &mut [f32]) {
        assert_eq!(x.len(), n * self.cols, "x must be n × cols");
        match precision {
            ActPrecision::Int8 => {
                let mut acts = QActs::default();
                quantize_acts(x, n, self.cols, self.format.block_len(), &mut acts);
                self.matmul_acts(kernel, &acts, out);
            }
            ActPrecision::Int16 => {
                let mut acts = QActs16::default();
                quantize_acts16(x, n, self.cols, &mut acts);
                self.matmul_acts16(kernel, &acts, out);
            }
        }
    }

    /// The product with activations already quantized by [`quantize_acts`]
    /// (with `block_len = self.format().block_len()`), so several matrices
    /// that read the same input quantize it once. `out` is `acts.n × rows`.
    pub fn matmul_acts(&self, kernel: Kernel, acts: &QActs, out: &mut [f32]) {
        assert_eq!(acts.cols, self.cols, "activations must have cols values per row");
        assert_eq!(
            acts.block_len,
            self.format.block_len(),
            "activation blocks must match the format"
        );
        self.matmul_rows(kernel, acts, out);
    }

    /// The product with activations already quantized by
    /// [`quantize_acts16`] (any format reads the same [`QActs16`]).
    /// `out` is `acts.n × rows`.
    pub fn matmul_acts16(&self, kernel: Kernel, acts: &QActs16, out: &mut [f32]) {
        assert_eq!(acts.cols, self.cols, "activations must have cols values per row");
        self.matmul_rows(kernel, acts, out);
    }

    /// The product for any activation kind, split across rayon tasks.
    fn matmul_rows<A: Acts>(&self, kernel: Kernel, acts: &A, out: &mut [f32]) {
        let (rows, n) = (self.rows, acts.rows());
        assert_eq!(out.len(), n * rows, "out must be n × rows");
        let kernel = if kernel.is_available() {
            kernel
        } else {
            Kernel::Portable
        };
        if rows == 0 || n == 0 {
            return;
        }
        if self.cols == 0 {
            out.fill(0.0);
            return;
        }
        let sink = Out::new(out);
        let run = |r0: usize, r1: usize| self.rows_into(kernel, acts, r0, r1, &sink);
        let threads = rayon::current_num_threads();
        if threads == 1 || self.data.len() * n < SERIAL_WORK {
            run(0, rows);
            return;
        }
        // Tasks of whole tiles, about four per thread for balance.
        let tile_bytes = self.row_bytes() * ROW_TILE * n;
        let tiles = rows.div_ceil(ROW_TILE);
        let per_task = tiles.div_ceil(threads * 4).max((SERIAL_WORK / 4).div_ceil(tile_bytes)) * ROW_TILE;
        (0..rows.div_ceil(per_task))
            .into_par_iter()
            .for_each(|task| run(task * per_task, ((task + 1) * per_task).min(rows)));
    }

    /// Output rows `r0..r1` for every activation row into `sink`: chunks
    /// of weight rows of about [`CHUNK_BYTES`], each run against every tile
    /// of activation rows in turn, so a tile of activations stays in L1
    /// while the chunk's weights stream from L2.
    fn rows_into<A: Acts>(&self, kernel: Kernel, acts: &A, r0: usize, r1: usize, sink: &Out) {
        let (n, rb) = (acts.rows(), self.row_bytes());
        let chunk = (CHUNK_BYTES / rb.max(1)).max(1).div_ceil(ROW_TILE) * ROW_TILE;
        for c0 in (r0..r1).step_by(chunk) {
            let c1 = (c0 + chunk).min(r1);
            for t0 in (0..n).step_by(A::TILE) {
                let tn = A::TILE.min(n - t0);
                for tile in (c0..c1).step_by(ROW_TILE) {
                    self.tile_into(kernel, acts, (tile, (tile + ROW_TILE).min(c1)), (t0, tn), sink);
                }
            }
        }
    }

    /// Output rows `r0..r1` (at most [`ROW_TILE`]) for activation rows
    /// `t0..t0 + tn` (at most the kernel's tile) into `sink`.
    fn tile_into<A: Acts>(
        &self,
        kernel: Kernel,
        acts: &A,
        (r0, r1): (usize, usize),
        (t0, tn): (usize, usize),
        sink: &Out,
    ) {
        let (rows, rb) = (self.rows, self.row_bytes());
        let mut buf = [0f32; TOKENS16 * ROW_TILE];
        let mut run = [0f32; ROW_TILE];
        let run = &mut run[..r1 - r0];
        let vals = &mut buf[..(r1 - r0) * tn];
        acts.dot(kernel, self.format, &self.data[r0 * rb..r1 * rb], rb, t0, tn, vals);
        for t in 0..tn {
            for (r, row_vals) in run.iter_mut().zip(vals.chunks_exact(tn)) {
                *r = row_vals[t];
            }
            // SAFETY: this call's caller owns output rows `r0..r1` of every
            // activation row (callers give tasks disjoint ranges).
            unsafe { sink.write((t0 + t) * rows + r0, run) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: a seeded stream of pseudo-random words.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        /// Uniform in `[-1, 1)`.
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// A matrix of random blocks whose f16 fields are finite, of either sign.
    fn random_matrix(format: BlockFormat, rows: usize, cols: usize, rng: &mut Rng) -> QMatrix {
        let len = format.row_bytes(cols).unwrap_or(0) * rows;
        let mut data: Vec<u8> = (0..len).map(|_| (rng.next() >> 32) as u8).collect();
        let fields: &[usize] = match format {
            BlockFormat::Q4_0 | BlockFormat::Q5_0 | BlockFormat::Q8_0 => &[0],
            BlockFormat::Q6_K => &[208],
            _ => &[0, 2],
        };
        for block in data.chunks_exact_mut(format.block_bytes()) {
            for &at in fields {
                let v = half::f16::from_f32(0.05 * rng.unit());
                block[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        QMatrix::new(format, rows, cols, data).expect("whole blocks")
    }

    /// Every output of a product of `n` activation rows equals, bit for bit,
    /// the product of that row alone: whatever tile of rows a kernel call
    /// takes, each row goes through the same operations in the same order.
    #[test]
    fn each_activation_row_gets_the_bits_it_gets_alone() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (rows, cols) = (37, 512);
        for format in BlockFormat::ALL {
            let m = random_matrix(format, rows, cols, &mut rng);
            for kernel in Kernel::ALL.into_iter().filter(|k| k.is_available()) {
                for n in 1..=16 {
                    let x: Vec<f32> = (0..n * cols).map(|_| 3.0 * rng.unit()).collect();
                    let mut acts = QActs16::default();
                    quantize_acts16(&x, n, cols, &mut acts);
                    let mut batched = vec![0f32; n * rows];
                    m.matmul_acts16(kernel, &acts, &mut batched);
                    for (t, got) in batched.chunks_exact(rows).enumerate() {
                        let mut one = QActs16::default();
                        quantize_acts16(&x[t * cols..(t + 1) * cols], 1, cols, &mut one);
                        let mut alone = vec![0f32; rows];
                        m.matmul_acts16(kernel, &one, &mut alone);
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(got),
                            bits(&alone),
                            "{format:?} {kernel:?}: row {t} of {n} differs from the row alone"
                        );
                    }
                }
            }
        }
    }

    /// The row dequantization this CPU runs (AVX2 where it has it) gives
    /// the scalar reference's values bit for bit, every format.
    #[test]
    fn dequantization_equals_the_scalar_reference_bit_for_bit() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for format in BlockFormat::ALL {
            let cols = 1024;
            let m = random_matrix(format, 3, cols, &mut rng);
            for r in 0..3 {
                let (mut got, mut want) = (vec![f32::NAN; cols], vec![f32::NAN; cols]);
                m.dequantize_row(r, &mut got);
                super::super::blocks::dequantize_row(
                    format,
                    &m.data[r * m.row_bytes()..(r + 1) * m.row_bytes()],
                    &mut want,
                );
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{format:?} row {r}");
            }
        }
    }
}
