//! Matrices of 32-weight blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) repacked in
//! panels of [`PANEL`] rows, for products with 16-bit activations
//! ([`QActs16`]) that keep a panel's rows in the lanes of a register.
//!
//! Per output `o`, activation row `t` and group `g` of 32 columns, the
//! integer sum `s = Σ_k q[o][k]·x_t[k]` is exact (i32), and the output is
//! accumulated group by group from 0:
//! `acc = fma(d_o·d_x, f32(s), acc)`, then, for the formats with a minimum
//! term (`m = -8d` for Q4_0, the stored `m` for Q4_1 and Q5_1),
//! `acc = fma(m_o, Σx_t, acc)`. The AVX2 kernel (eight outputs in the lanes,
//! `vpmaddwd` over pairs of columns, or `vpdpwssd` where the CPU has
//! AVX-512 VNNI, there with two panels in the 16 lanes of a 512-bit
//! register where it has AVX-512 BW) and the portable loop run these
//! operations, so an output's bits depend neither on the kernel, nor on how
//! many activation rows a call takes, nor on which rows share a tile:
//! batched decoding gives each sequence the numbers it gets alone. Each
//! weight is unpacked once per tile of [`TILE_ROWS`] activation rows
//! ([`WIDE_TILE_ROWS`] in the 512-bit form) and
//! each group costs one conversion and one or two FMAs per eight outputs
//! and row, where row-major kernels pay them per output.
//!
//! Layout, per panel and group: the rows' f16 scales `d` (then their f16
//! minimums for Q4_1 and Q5_1), and the codes as chunks of 16 bytes, each
//! byte two columns of a row: for pair `j` of columns (`2j`, `2j + 1`),
//! byte `2o + c` holds column `2j + c` of row `o`. The 4-bit formats keep
//! pairs `j` and `j + 8` in the low and high nibbles of chunk `j` (8
//! chunks); the others store one signed code per byte (`q - 16` for Q5_0;
//! 16 chunks). A last panel of fewer rows is padded with zeros.

use half::f16;
use rayon::prelude::*;

use super::acts::{quantize_acts16, QActs16};
use super::blocks::small_value;
use super::matmul::Out;
use super::{BlockFormat, Kernel, QMatrix};

/// Rows per panel: the eight i32 or f32 lanes of an AVX2 register.
pub const PANEL: usize = 8;

/// Columns per group (every format's blocks are whole groups).
const GROUP: usize = 32;

/// Activation rows one unpacking of a panel's weights serves.
const TILE_ROWS: usize = 4;

/// The same in the 512-bit form (32 registers hold its sums).
const WIDE_TILE_ROWS: usize = 8;

/// Bytes of panels one pass over the tiles of activation rows takes.
const CHUNK_BYTES: usize = 96 << 10;

/// Multiply-adds below which a product runs on the calling thread.
const SERIAL_MACS: usize = 1 << 18;

/// The minimum term of a format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Min {
    /// None (Q5_0 and Q8_0 store signed codes).
    None,
    /// `m = -8d` (Q4_0).
    Minus8,
    /// A stored f16 minimum (Q4_1, Q5_1).
    Stored,
}

/// How a format's codes and scales are stored in panels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    /// Two 4-bit codes per byte (else one signed byte per code).
    nibbles: bool,
    min: Min,
}

impl Layout {
    fn of(format: BlockFormat) -> Option<Self> {
        let (nibbles, min) = match format {
            BlockFormat::Q4_0 => (true, Min::Minus8),
            BlockFormat::Q4_1 => (true, Min::Stored),
            BlockFormat::Q5_0 | BlockFormat::Q8_0 => (false, Min::None),
            BlockFormat::Q5_1 => (false, Min::Stored),
            _ => return None,
        };
        Some(Self { nibbles, min })
    }

    /// Code bytes per group of a panel.
    fn code_bytes(self) -> usize {
        if self.nibbles {
            GROUP * PANEL / 2
        } else {
            GROUP * PANEL
        }
    }

    /// f16 scales per group of a panel.
    fn scale_len(self) -> usize {
        if self.min == Min::Stored {
            2 * PANEL
        } else {
            PANEL
        }
    }

    /// The code of row `o`, column `k` of a panel's group (`codes` that
    /// group's).
    fn code(self, codes: &[u8], o: usize, k: usize) -> i32 {
        let (j, c) = (k / 2, k % 2);
        if self.nibbles {
            let byte = codes[(j % 8) * 16 + 2 * o + c];
            i32::from(if j < 8 { byte & 0x0f } else { byte >> 4 })
        } else {
            i32::from(codes[j * 16 + 2 * o + c] as i8)
        }
    }

    /// `(d, m)` of row `o` of a panel's group (`scales` that group's).
    fn scale(self, scales: &[u16], o: usize) -> (f32, f32) {
        let d = f16::from_bits(scales[o]).to_f32();
        let m = match self.min {
            Min::None => 0.0,
            Min::Minus8 => -8.0 * d,
            Min::Stored => f16::from_bits(scales[PANEL + o]).to_f32(),
        };
        (d, m)
    }
}

/// A block matrix repacked in panels of [`PANEL`] rows (see the module
/// documentation).
#[derive(Clone, Debug)]
pub struct PanelMatrix {
    format: BlockFormat,
    layout: Layout,
    rows: usize,
    cols: usize,
    /// f16 bits, per panel and group.
    scales: Vec<u16>,
    /// Per panel and group.
    codes: Vec<u8>,
}

impl PanelMatrix {
    /// Repacks `m`, or `None` for a format without a panel form (the
    /// 256-weight k-quants).
    pub fn pack(m: &QMatrix) -> Option<Self> {
        let layout = Layout::of(m.format())?;
        let (rows, cols, format) = (m.rows(), m.cols(), m.format());
        let groups = cols / GROUP;
        let (sl, cb, bb) = (layout.scale_len(), layout.code_bytes(), format.block_bytes());
        let panels = rows.div_ceil(PANEL);
        let mut scales = vec![0u16; panels * groups * sl];
        let mut codes = vec![0u8; panels * groups * cb];
        scales
            .par_chunks_mut(groups * sl)
            .zip(codes.par_chunks_mut(groups * cb))
            .enumerate()
            .for_each(|(p, (sc, co))| {
                for o in 0..PANEL.min(rows - p * PANEL) {
                    let row = m.row(p * PANEL + o);
                    for g in 0..groups {
                        let block = &row[g * bb..(g + 1) * bb];
                        let s = &mut sc[g * sl..(g + 1) * sl];
                        s[o] = u16::from_le_bytes([block[0], block[1]]);
                        if layout.min == Min::Stored {
                            s[PANEL + o] = u16::from_le_bytes([block[2], block[3]]);
                        }
                        let c = &mut co[g * cb..(g + 1) * cb];
                        for k in 0..GROUP {
                            let (j, half) = (k / 2, k % 2);
                            let q = small_value(format, block, k);
                            if layout.nibbles {
                                c[(j % 8) * 16 + 2 * o + half] |= (q as u8 & 0x0f) << (4 * (j / 8));
                            } else {
                                let off = if format == BlockFormat::Q5_0 { 16 } else { 0 };
                                c[j * 16 + 2 * o + half] = (q - off) as i8 as u8;
                            }
                        }
                    }
                }
            });
        Some(Self {
            format,
            layout,
            rows,
            cols,
            scales,
            codes,
        })
    }

    /// The block format the panels hold.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Weights per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the panels occupy.
    pub fn bytes(&self) -> usize {
        self.scales.len() * 2 + self.codes.len()
    }

    fn groups(&self) -> usize {
        self.cols / GROUP
    }

    /// Panel `p`'s scales and codes.
    fn panel(&self, p: usize) -> (&[u16], &[u8]) {
        let (sl, cl) = (
            self.groups() * self.layout.scale_len(),
            self.groups() * self.layout.code_bytes(),
        );
        (&self.scales[p * sl..(p + 1) * sl], &self.codes[p * cl..(p + 1) * cl])
    }

    /// `out[t][r] = Σ_c w[r][c]·x[t][c]` for `n` rows of `x` (`n × cols`
    /// in, `n × rows` out, row-major), the activations quantized by
    /// [`quantize_acts16`], with the fastest kernel this CPU has.
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) {
        assert_eq!(x.len(), n * self.cols, "x must be n × cols");
        let mut acts = QActs16::default();
        quantize_acts16(x, n, self.cols, &mut acts);
        self.matmul_acts16(Kernel::best(), &acts, out);
    }

    /// The product with activations already quantized by
    /// [`quantize_acts16`] (so several matrices that read the same input
    /// quantize it once), with a chosen kernel (the portable one where this
    /// CPU does not run `kernel`); every kernel gives the same bits.
    pub fn matmul_acts16(&self, kernel: Kernel, acts: &QActs16, out: &mut [f32]) {
        let n = acts.n;
        assert_eq!(acts.cols, self.cols, "activations must have cols values per row");
        assert_eq!(out.len(), n * self.rows, "out must be n × rows");
        let kernel = if kernel.is_available() {
            kernel
        } else {
            Kernel::Portable
        };
        if n == 0 || self.rows == 0 {
            return;
        }
        let panels = self.rows.div_ceil(PANEL);
        let sink = Out::new(out);
        // Chunks of panels that stay in L2 while every tile of activation
        // rows (in L1) runs over them.
        let (sl, cb) = (self.layout.scale_len() * 2, self.layout.code_bytes());
        // Chunks and tasks take whole pairs of panels, which the 512-bit
        // form runs together (an odd panel takes the narrower form).
        let chunk = (CHUNK_BYTES / (self.groups() * (sl + cb)).max(1)).max(2) & !1;
        let tile = match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if x86::zmm() => WIDE_TILE_ROWS,
            _ => TILE_ROWS,
        };
        let run = |p0: usize, p1: usize| {
            for c0 in (p0..p1).step_by(chunk) {
                for t0 in (0..n).step_by(tile) {
                    let tn = tile.min(n - t0);
                    let c1 = (c0 + chunk).min(p1);
                    for p in (c0..c1).step_by(2) {
                        self.tile_into(kernel, (p, (c1 - p).min(2)), acts, (t0, tn), &sink);
                    }
                }
            }
        };
        let threads = rayon::current_num_threads();
        if threads == 1 || n * self.rows * self.cols < SERIAL_MACS {
            run(0, panels);
            return;
        }
        let per_task = panels.div_ceil(threads * 4).next_multiple_of(2);
        (0..panels.div_ceil(per_task))
            .into_par_iter()
            .for_each(|task| run(task * per_task, ((task + 1) * per_task).min(panels)));
    }

    /// Panels `p..p + np` (`np` 1 or 2) for activation rows `t0..t0 + tn`
    /// (at most [`WIDE_TILE_ROWS`], and [`TILE_ROWS`] but in the 512-bit
    /// form) into `sink`.
    fn tile_into(&self, kernel: Kernel, (p, np): (usize, usize), acts: &QActs16, (t0, tn): (usize, usize), sink: &Out) {
        let mut vals = [[[0f32; PANEL]; WIDE_TILE_ROWS]; 2];
        let [a, b] = &mut vals;
        let (a, b) = (&mut a[..tn], &mut b[..tn]);
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the AVX2 kernel is chosen only where the CPU has AVX2,
            // FMA and F16C (`matmul_acts16` checks).
            Kernel::Avx2 if np == 2 => unsafe {
                x86::tile2(self.layout, [self.panel(p), self.panel(p + 1)], acts, t0, [a, b])
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                // One panel takes the 256-bit forms, four rows at a time.
                for (i, a) in a.chunks_mut(TILE_ROWS).enumerate() {
                    // SAFETY: as above.
                    unsafe { x86::tile(self.layout, self.panel(p), acts, t0 + i * TILE_ROWS, a) }
                }
            }
            _ => {
                self.tile_portable(self.panel(p), acts, t0, a);
                if np == 2 {
                    self.tile_portable(self.panel(p + 1), acts, t0, b);
                }
            }
        }
        for (i, v) in vals[..np].iter().enumerate() {
            let q = p + i;
            let live = PANEL.min(self.rows - q * PANEL);
            for (t, v) in v[..tn].iter().enumerate() {
                // SAFETY: this task owns output columns `8q..8q + live` of
                // every row (tasks take disjoint panel ranges).
                unsafe { sink.write((t0 + t) * self.rows + q * PANEL, &v[..live]) };
            }
        }
    }

    /// The portable form of the kernel: the same operations, lane by lane.
    fn tile_portable(&self, (scales, codes): (&[u16], &[u8]), acts: &QActs16, t0: usize, out: &mut [[f32; PANEL]]) {
        let (l, groups, cols) = (self.layout, self.groups(), self.cols);
        let (sl, cb) = (l.scale_len(), l.code_bytes());
        for (t, o) in out.iter_mut().enumerate() {
            let r = t0 + t;
            let xq = &acts.qs[r * cols..(r + 1) * cols];
            for (lane, v) in o.iter_mut().enumerate() {
                let mut acc = 0f32;
                for g in 0..groups {
                    let c = &codes[g * cb..(g + 1) * cb];
                    let s: i32 = (0..GROUP)
                        .map(|k| l.code(c, lane, k) * i32::from(xq[g * GROUP + k]))
                        .sum();
                    let (d, m) = l.scale(&scales[g * sl..(g + 1) * sl], lane);
                    acc = (d * acts.d[r * groups + g]).mul_add(s as f32, acc);
                    if l.min != Min::None {
                        acc = m.mul_add(acts.sum[r * groups + g], acc);
                    }
                }
                *v = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2 kernel: a panel's eight rows in the lanes of a register.

    use std::arch::x86_64::*;

    use super::{Layout, Min, QActs16, GROUP, PANEL, TILE_ROWS, WIDE_TILE_ROWS};

    /// How many groups ahead of the one read [`tile_t`] prefetches codes.
    const PREFETCH_GROUPS: usize = 4;

    /// Panel rows × activation rows `t0..t0 + out.len()` (1..=4).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile(l: Layout, panel: (&[u16], &[u8]), acts: &QActs16, t0: usize, out: &mut [[f32; PANEL]]) {
        dispatch::<1>(l, [panel], acts, t0, [out]);
    }

    /// Two panels at once (each activation pair loaded once for both), as
    /// [`tile`] for each.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile2(
        l: Layout,
        panels: [(&[u16], &[u8]); 2],
        acts: &QActs16,
        t0: usize,
        out: [&mut [[f32; PANEL]]; 2],
    ) {
        dispatch::<2>(l, panels, acts, t0, out);
    }

    /// Whether the kernel takes the 256-bit AVX-512 VNNI form (`vpdpwssd`,
    /// which adds the pair products to the sums in one instruction): where
    /// the CPU has AVX-512 VNNI and VL, unless `WGINFER_VNNI=off` (for A/B
    /// timing; the results are the same bits).
    pub(super) fn vnni() -> bool {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *VNNI.get_or_init(|| {
            std::is_x86_feature_detected!("avx512vnni")
                && std::is_x86_feature_detected!("avx512vl")
                && !std::env::var("WGINFER_VNNI").is_ok_and(|v| v == "off")
        });
        #[cfg(test)]
        let on = on && FORM.with(|f| f.get()) < 2;
        on
    }

    /// Whether two panels run as one 512-bit register ([`tile_zmm`]): where
    /// the 256-bit VNNI form runs and the CPU has AVX-512 F and BW, unless
    /// `WGINFER_VNNI=ymm` (the results are the same bits).
    pub(super) fn zmm() -> bool {
        static ZMM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = vnni()
            && *ZMM.get_or_init(|| {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && !std::env::var("WGINFER_VNNI").is_ok_and(|v| v == "ymm")
            });
        #[cfg(test)]
        let on = on && FORM.with(|f| f.get()) == 0;
        on
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dispatch<const P: usize>(
        l: Layout,
        panels: [(&[u16], &[u8]); P],
        acts: &QActs16,
        t0: usize,
        mut out: [&mut [[f32; PANEL]]; P],
    ) {
        let n = out[0].len();
        let vnni = vnni();
        if n > 1 && zmm() {
            if let ([a, b], [oa, ob]) = (&panels[..], &mut out[..]) {
                // 8, 4, 3 or 2 rows at once; 5 to 7 as 4 and the rest.
                let t = if n >= WIDE_TILE_ROWS {
                    WIDE_TILE_ROWS
                } else {
                    n.min(TILE_ROWS)
                };
                let ((oa, ra), (ob, rb)) = (oa.split_at_mut(t), ob.split_at_mut(t));
                macro_rules! zmm_rows {
                    ($nib:literal, $min:literal) => {
                        // SAFETY: `zmm()` found AVX-512 F, BW, VNNI and VL.
                        unsafe {
                            match t {
                                2 => tile_zmm::<$nib, $min, 2>(l, [*a, *b], acts, t0, [oa, ob]),
                                3 => tile_zmm::<$nib, $min, 3>(l, [*a, *b], acts, t0, [oa, ob]),
                                TILE_ROWS => tile_zmm::<$nib, $min, TILE_ROWS>(l, [*a, *b], acts, t0, [oa, ob]),
                                _ => tile_zmm::<$nib, $min, WIDE_TILE_ROWS>(l, [*a, *b], acts, t0, [oa, ob]),
                            }
                        }
                    };
                }
                match (l.nibbles, l.min) {
                    (true, Min::Minus8) => zmm_rows!(true, 1),
                    (true, _) => zmm_rows!(true, 2),
                    (false, Min::None) => zmm_rows!(false, 0),
                    (false, _) => zmm_rows!(false, 2),
                }
                if !ra.is_empty() {
                    dispatch::<2>(l, [*a, *b], acts, t0 + t, [ra, rb]);
                }
                return;
            }
        }
        macro_rules! rows {
            ($nib:literal, $min:literal) => {
                match n {
                    // One row: the sums' dependency chains are short, and
                    // `vpdpwssd`'s latency would hold them (vpaddd's is one
                    // cycle).
                    1 => tile_madd::<$nib, $min, P, 1>(l, panels, acts, t0, out),
                    // SAFETY: `vnni()` found AVX-512 VNNI and VL.
                    _ if vnni => unsafe {
                        match n {
                            2 => tile_vnni::<$nib, $min, P, 2>(l, panels, acts, t0, out),
                            3 => tile_vnni::<$nib, $min, P, 3>(l, panels, acts, t0, out),
                            _ => tile_vnni::<$nib, $min, P, TILE_ROWS>(l, panels, acts, t0, out),
                        }
                    },
                    2 => tile_madd::<$nib, $min, P, 2>(l, panels, acts, t0, out),
                    3 => tile_madd::<$nib, $min, P, 3>(l, panels, acts, t0, out),
                    _ => tile_madd::<$nib, $min, P, TILE_ROWS>(l, panels, acts, t0, out),
                }
            };
        }
        match (l.nibbles, l.min) {
            (true, Min::Minus8) => rows!(true, 1),
            (true, _) => rows!(true, 2),
            (false, Min::None) => rows!(false, 0),
            (false, _) => rows!(false, 2),
        }
    }

    #[cfg(test)]
    thread_local! {
        /// Set by tests to run a narrower form than the CPU's best: 1 the
        /// 256-bit VNNI form, 2 the `vpmaddwd` form.
        pub(super) static FORM: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
    }

    /// `sum + Σ pairs w·x` with `vpmaddwd` and `vpaddd`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn madd(sum: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi32(sum, _mm256_madd_epi16(w, x))
    }

    /// The same sums in one `vpdpwssd` (exact: no pair sum nor group sum
    /// leaves the i32 range).
    #[inline]
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    fn dpwssd(sum: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(sum, w, x)
    }

    /// Whether activation rows up to `end` and every group of `panels` are
    /// in range (what the kernels' unchecked reads need).
    fn fits(l: Layout, panels: &[(&[u16], &[u8])], acts: &QActs16, end: usize) -> bool {
        let (cols, groups) = (acts.cols, acts.cols / GROUP);
        let (sl, cb) = (l.scale_len(), l.code_bytes());
        end * cols <= acts.qs.len()
            && end * groups <= acts.d.len().min(acts.sum.len())
            && panels
                .iter()
                .all(|(s, c)| s.len() >= groups * sl && c.len() >= groups * cb)
    }

    /// Generates the kernel with a pair-product accumulation (`$acc`) and
    /// the target features it needs.
    macro_rules! tile_kernel {
        ($name:ident, $features:literal, $acc:ident) => {
            /// `NIB`: 4-bit codes; `MIN`: 0 none, 1 `-8d`, 2 stored; `P` panels;
            /// `T` activation rows.
            // The loops index `sum` by panel and row at once.
            #[allow(clippy::needless_range_loop)]
            #[target_feature(enable = $features)]
            fn $name<const NIB: bool, const MIN: u8, const P: usize, const T: usize>(
                l: Layout,
                panels: [(&[u16], &[u8]); P],
                acts: &QActs16,
                t0: usize,
                out: [&mut [[f32; PANEL]]; P],
            ) {
                let (cols, groups) = (acts.cols, acts.cols / GROUP);
                let (sl, cb) = (l.scale_len(), l.code_bytes());
                assert!(fits(l, &panels, acts, t0 + T), "tile out of range");
                let xs: [*const i16; T] = std::array::from_fn(|t| acts.qs[(t0 + t) * cols..].as_ptr());
                let cs: [*const u8; P] = std::array::from_fn(|i| panels[i].1.as_ptr());
                let mask = _mm256_set1_epi16(0x0f);
                let mut acc = [[_mm256_setzero_ps(); T]; P];
                for g in 0..groups {
                    // Codes a few groups ahead, fetched as fast as these are read
                    // (prefetching never faults, so the addresses may run past the
                    // panel).
                    for c in cs {
                        let ahead = c.wrapping_add((g + PREFETCH_GROUPS) * cb);
                        for line in (0..cb).step_by(64) {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
                        }
                    }
                    let mut sum = [[_mm256_setzero_si256(); T]; P];
                    // SAFETY: `g < groups`, so each panel's group codes (`cb` bytes
                    // at `g·cb`) are in its codes and the group's 32 activations (at
                    // `(t0 + t)·cols + 32g`) in `acts.qs` (checked above); each pair
                    // of i16 is read as one unaligned i32, chunks as unaligned 16
                    // bytes.
                    unsafe {
                        let pair = |t: usize, j: usize| -> __m256i {
                            _mm256_set1_epi32(std::ptr::read_unaligned(
                                xs[t].add(g * GROUP + 2 * j).cast::<i32>(),
                            ))
                        };
                        if NIB {
                            for j in 0..8 {
                                let mut w = [[_mm256_setzero_si256(); 2]; P];
                                for (i, wi) in w.iter_mut().enumerate() {
                                    let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(cs[i].add(g * cb + 16 * j).cast()));
                                    *wi = [_mm256_and_si256(v, mask), _mm256_srli_epi16::<4>(v)];
                                }
                                for t in 0..T {
                                    let (x0, x1) = (pair(t, j), pair(t, j + 8));
                                    for i in 0..P {
                                        sum[i][t] = $acc(sum[i][t], w[i][0], x0);
                                        sum[i][t] = $acc(sum[i][t], w[i][1], x1);
                                    }
                                }
                            }
                        } else {
                            for j in 0..16 {
                                let w: [__m256i; P] = std::array::from_fn(|i| {
                                    _mm256_cvtepi8_epi16(_mm_loadu_si128(cs[i].add(g * cb + 16 * j).cast()))
                                });
                                for t in 0..T {
                                    let x = pair(t, j);
                                    for i in 0..P {
                                        sum[i][t] = $acc(sum[i][t], w[i], x);
                                    }
                                }
                            }
                        }
                    }
                    for i in 0..P {
                        let s = &panels[i].0[g * sl..];
                        // SAFETY: `s` holds at least `sl` f16 (checked above): 8
                        // scales, and 8 minimums where stored; `loadu` needs no
                        // alignment.
                        let (d, m) = unsafe {
                            let d = _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast()));
                            let m = match MIN {
                                1 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
                                2 => _mm256_cvtph_ps(_mm_loadu_si128(s[PANEL..].as_ptr().cast())),
                                _ => _mm256_setzero_ps(),
                            };
                            (d, m)
                        };
                        for (t, a) in acc[i].iter_mut().enumerate() {
                            let r = (t0 + t) * groups + g;
                            let dd = _mm256_mul_ps(d, _mm256_set1_ps(acts.d[r]));
                            *a = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sum[i][t]), *a);
                            if MIN != 0 {
                                *a = _mm256_fmadd_ps(m, _mm256_set1_ps(acts.sum[r]), *a);
                            }
                        }
                    }
                }
                for (acc, out) in acc.iter().zip(out) {
                    for (a, o) in acc.iter().zip(out.iter_mut()) {
                        // SAFETY: `o` holds 8 writable f32; `storeu` needs no
                        // alignment.
                        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *a) };
                    }
                }
            }
        };
    }

    tile_kernel!(tile_madd, "avx2,fma,f16c", madd);
    tile_kernel!(tile_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", dpwssd);

    /// Two 8-row panels side by side in the 16 lanes of 512-bit registers
    /// (their 16-byte code runs loaded as one 32-byte value): the operations
    /// of `tile_vnni` on both panels at once, lane for lane, so the same
    /// bits, in half the `vpdpwssd` instructions and one activation
    /// broadcast per pair of codes for both panels.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    fn tile_zmm<const NIB: bool, const MIN: u8, const T: usize>(
        l: Layout,
        panels: [(&[u16], &[u8]); 2],
        acts: &QActs16,
        t0: usize,
        out: [&mut [[f32; PANEL]]; 2],
    ) {
        let (cols, groups) = (acts.cols, acts.cols / GROUP);
        let (sl, cb) = (l.scale_len(), l.code_bytes());
        assert!(
            fits(l, &panels, acts, t0 + T) && out.iter().all(|o| o.len() >= T),
            "tile out of range"
        );
        let xs: [*const i16; T] = std::array::from_fn(|t| acts.qs[(t0 + t) * cols..].as_ptr());
        let cs = [panels[0].1.as_ptr(), panels[1].1.as_ptr()];
        let mask = _mm512_set1_epi16(0x0f);
        let mut acc = [_mm512_setzero_ps(); T];
        for g in 0..groups {
            for c in cs {
                let ahead = c.wrapping_add((g + PREFETCH_GROUPS) * cb);
                for line in (0..cb).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
                }
            }
            let mut sum = [_mm512_setzero_si512(); T];
            // SAFETY: as in `tile_vnni`: `g < groups`, so each panel's 16
            // bytes at `g·cb + 16j` are in its codes and the activation
            // pairs in `acts.qs` (checked above); loads are unaligned.
            unsafe {
                let pair = |t: usize, j: usize| -> __m512i {
                    _mm512_set1_epi32(std::ptr::read_unaligned(xs[t].add(g * GROUP + 2 * j).cast::<i32>()))
                };
                let both = |at: usize| -> __m256i { _mm256_loadu2_m128i(cs[1].add(at).cast(), cs[0].add(at).cast()) };
                if NIB {
                    for j in 0..8 {
                        let v = _mm512_cvtepu8_epi16(both(g * cb + 16 * j));
                        let (w0, w1) = (_mm512_and_si512(v, mask), _mm512_srli_epi16::<4>(v));
                        for t in 0..T {
                            let (x0, x1) = (pair(t, j), pair(t, j + 8));
                            sum[t] = _mm512_dpwssd_epi32(sum[t], w0, x0);
                            sum[t] = _mm512_dpwssd_epi32(sum[t], w1, x1);
                        }
                    }
                } else {
                    for j in 0..16 {
                        let w = _mm512_cvtepi8_epi16(both(g * cb + 16 * j));
                        for t in 0..T {
                            sum[t] = _mm512_dpwssd_epi32(sum[t], w, pair(t, j));
                        }
                    }
                }
            }
            let (s0, s1) = (&panels[0].0[g * sl..], &panels[1].0[g * sl..]);
            // SAFETY: `s0` and `s1` hold at least `sl` f16 (checked above):
            // 8 scales, and 8 minimums where stored.
            let (d, m) = unsafe {
                let halves = |at: usize| {
                    _mm512_cvtph_ps(_mm256_loadu2_m128i(s1[at..].as_ptr().cast(), s0[at..].as_ptr().cast()))
                };
                let d = halves(0);
                let m = match MIN {
                    1 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
                    2 => halves(PANEL),
                    _ => _mm512_setzero_ps(),
                };
                (d, m)
            };
            for (t, a) in acc.iter_mut().enumerate() {
                let r = (t0 + t) * groups + g;
                let dd = _mm512_mul_ps(d, _mm512_set1_ps(acts.d[r]));
                *a = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sum[t]), *a);
                if MIN != 0 {
                    *a = _mm512_fmadd_ps(m, _mm512_set1_ps(acts.sum[r]), *a);
                }
            }
        }
        let [oa, ob] = out;
        for (t, a) in acc.iter().enumerate() {
            let lo = _mm512_castps512_ps256(*a);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*a)));
            // SAFETY: each row holds 8 writable f32 (`t < T`, checked
            // above); `storeu` needs no alignment.
            unsafe {
                _mm256_storeu_ps(oa[t].as_mut_ptr(), lo);
                _mm256_storeu_ps(ob[t].as_mut_ptr(), hi);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix of random blocks with finite f16 fields of either sign.
    fn random_matrix(format: BlockFormat, rows: usize, cols: usize, seed: u64) -> QMatrix {
        let mut s = seed;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let len = format.row_bytes(cols).unwrap_or(0) * rows;
        let mut data: Vec<u8> = (0..len).map(|_| (next() >> 32) as u8).collect();
        let fields: &[usize] = match format {
            BlockFormat::Q4_1 | BlockFormat::Q5_1 => &[0, 2],
            _ => &[0],
        };
        for block in data.chunks_exact_mut(format.block_bytes()) {
            for &at in fields {
                let v = f16::from_f32(((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1);
                block[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        QMatrix::new(format, rows, cols, data).expect("whole blocks")
    }

    const FORMATS: [BlockFormat; 5] = [
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q5_1,
        BlockFormat::Q8_0,
    ];

    /// Each output equals, bit for bit, the group-by-group accumulation
    /// written out from the stored blocks (`small_value`, the f16 fields,
    /// `m = -8d` / `q - 16` for Q4_0 / Q5_0) and the quantized activations,
    /// for every kernel and row count (every tile shape).
    #[test]
    fn outputs_are_the_documented_accumulation_of_the_stored_blocks() {
        let (rows, cols) = (21, 96);
        for (fi, format) in FORMATS.into_iter().enumerate() {
            let m = random_matrix(format, rows, cols, 0x9e37_79b9 + fi as u64);
            let pm = PanelMatrix::pack(&m).expect("a 32-weight format");
            for n in [1, 2, 3, 4, 5, 7, 8, 9, 13] {
                let x: Vec<f32> = (0..n * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
                let mut acts = QActs16::default();
                quantize_acts16(&x, n, cols, &mut acts);
                let mut want = vec![0f32; n * rows];
                for (t, o) in want.chunks_exact_mut(rows).enumerate() {
                    for (r, v) in o.iter_mut().enumerate() {
                        let mut acc = 0f32;
                        for (g, block) in m.row(r).chunks_exact(format.block_bytes()).enumerate() {
                            let off = if format == BlockFormat::Q5_0 { 16 } else { 0 };
                            let s: i32 = (0..32)
                                .map(|k| {
                                    (small_value(format, block, k) - off) * i32::from(acts.qs[t * cols + g * 32 + k])
                                })
                                .sum();
                            let half = |at: usize| f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
                            let d = half(0);
                            acc = (d * acts.d[t * (cols / 32) + g]).mul_add(s as f32, acc);
                            let min = match format {
                                BlockFormat::Q4_0 => Some(-8.0 * d),
                                BlockFormat::Q4_1 | BlockFormat::Q5_1 => Some(half(2)),
                                _ => None,
                            };
                            if let Some(mv) = min {
                                acc = mv.mul_add(acts.sum[t * (cols / 32) + g], acc);
                            }
                        }
                        *v = acc;
                    }
                }
                for kernel in Kernel::ALL.into_iter().filter(|k| k.is_available()) {
                    // The AVX2 kernel in each form the CPU has: 512-bit and
                    // 256-bit VNNI, `vpmaddwd` (the product is small enough
                    // to run on this thread).
                    for form in 0..3u8 {
                        #[cfg(target_arch = "x86_64")]
                        x86::FORM.with(|f| f.set(form));
                        let mut got = vec![f32::NAN; n * rows];
                        pm.matmul_acts16(kernel, &acts, &mut got);
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "{format:?} {kernel:?} n={n} form {form}");
                    }
                    #[cfg(target_arch = "x86_64")]
                    x86::FORM.with(|f| f.set(0));
                }
            }
        }
    }

    /// Against the f32 product of the dequantized weights: within the
    /// 16-bit activation rounding (`Σ|w|·max|x_group|/65534` per output).
    #[test]
    fn outputs_are_close_to_the_f32_product() {
        let (rows, cols, n) = (19, 128, 3);
        for (fi, format) in FORMATS.into_iter().enumerate() {
            let m = random_matrix(format, rows, cols, 0x2545_f491 + fi as u64);
            let pm = PanelMatrix::pack(&m).expect("a 32-weight format");
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 53 % 97) as f32 - 48.0) / 9.0).collect();
            let mut got = vec![0f32; n * rows];
            pm.matmul(&x, n, &mut got);
            let mut w = vec![0f32; cols];
            for r in 0..rows {
                super::super::blocks::dequantize_row(format, m.row(r), &mut w);
                for t in 0..n {
                    let xt = &x[t * cols..(t + 1) * cols];
                    let want: f64 = w.iter().zip(xt).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                    let bound: f64 = w.iter().map(|a| f64::from(a.abs())).sum::<f64>() * 48.0 / 9.0 / 65534.0 + 1e-4;
                    let err = (f64::from(got[t * rows + r]) - want).abs();
                    assert!(err <= bound, "{format:?} row {r} t {t}: {err} > {bound}");
                }
            }
        }
    }

    /// The k-quants have no panel form.
    #[test]
    fn k_quants_are_not_packed() {
        let m = random_matrix(BlockFormat::Q4_K, 2, 256, 7);
        assert!(PanelMatrix::pack(&m).is_none());
    }
}
