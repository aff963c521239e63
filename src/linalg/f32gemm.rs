//! An AVX-512 f32 GEMM for prepared Linear weights: `y = x · Wᵀ + b` with
//! `W [n, k]` packed once into column panels of [`NR`] outputs, each panel
//! K-contiguous (`NR` floats per input, 64-byte aligned), so the
//! microkernel reads one panel row with [`V`] aligned loads and broadcasts
//! one `x` value per row against it: a register tile of up to [`MR`] rows ×
//! `NR` outputs accumulates in zmm registers over a K block of [`KC`]
//! inputs (the panel slice, `KC·NR·4` = 48 KiB, read from L1 and L2 while
//! the tile walks down the rows: three vectors per 24 FMAs, well within
//! L2's bandwidth, and half the passes over `y` of 128-input blocks). The bias enters as the accumulators' initial
//! value; the tile writes `y` directly (masked at the panel's end).
//! Parallel over (row range, panel range) tasks on the spinning workers of
//! [`super::pool`].
//!
//! With AVX2 + FMA and no AVX-512F the same scheme runs on ymm registers:
//! panels of [`NR2`] outputs (one 64-byte line per input), register tiles
//! of up to [`MR2`] rows × `NR2` outputs, K blocks of [`KC2`], tasks split
//! over panels first so a thin batch (m ≤ 64) reads the weight once per
//! thread.
//!
//! [`PackedF32::new`] returns `None` on CPUs without AVX-512F or AVX2 + FMA
//! (callers keep the `gemm` crate there).

use rayon::prelude::*;

/// zmm vectors per panel row.
pub const V: usize = 3;
/// Outputs per packed panel.
pub const NR: usize = V * 16;
/// Rows per register tile (`MR·V` accumulators, `V` weight registers and a
/// broadcast within the 32 zmm registers).
pub const MR: usize = 8;
/// Inputs per K block.
pub const KC: usize = 256;
/// Rows per parallel task (a multiple of [`MR`]), at most.
const TASK_ROWS: usize = 32;
/// Panels per parallel task.
const TASK_PANELS: usize = 4;
/// Below this many multiply-adds (about 3 µs on one core) a product runs
/// on one thread.
const PARALLEL_MIN: usize = 1 << 17;
/// Outputs per packed panel of the AVX2 kernel (two ymm vectors, one line).
pub const NR2: usize = 16;
/// Rows per register tile of the AVX2 kernel (`2·MR2` accumulators, two
/// weight registers and a broadcast within the 16 ymm registers).
pub const MR2: usize = 6;
/// Inputs per K block of the AVX2 kernel (a 16 KiB panel slice in L1).
pub const KC2: usize = 256;
/// Rows per parallel task of the AVX2 kernel.
const TASK_ROWS2: usize = 96;
/// Panels per parallel task of the AVX2 kernel, at most.
const TASK_PANELS2: usize = 4;

/// Which kernel a [`PackedF32`] is packed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// [`NR`]-output panels, zmm tiles.
    Avx512,
    /// [`NR2`]-output panels, ymm tiles.
    Avx2,
}

impl Isa {
    /// The kernel this CPU runs, if any.
    fn detect() -> Option<Self> {
        if super::vecops::has_avx512f() {
            Some(Self::Avx512)
        } else if super::conv::has_avx2_fma() {
            Some(Self::Avx2)
        } else {
            None
        }
    }

    /// Outputs per panel.
    fn nr(self) -> usize {
        match self {
            Self::Avx512 => NR,
            Self::Avx2 => NR2,
        }
    }
}

/// 16 floats on a 64-byte boundary: the panels' storage unit.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A `[n, k]` weight packed for [`PackedF32::run`]: panel `b` holds outputs
/// `b·NR..b·NR+NR`, `k` rows of `NR` floats; the last panel is only as many
/// 16-output vectors wide as its outputs need (zero-padded past `n`), so
/// 512 outputs take ten 48-wide panels and one 32-wide, not 528 columns.
#[derive(Clone, Debug)]
pub struct PackedF32 {
    n: usize,
    k: usize,
    isa: Isa,
    /// 16-output vectors in the last panel (1..=`nr/16`).
    last_v: usize,
    data: Vec<Line>,
}

/// Whether this CPU runs the AVX-512 or the AVX2 kernel.
pub fn available() -> bool {
    Isa::detect().is_some()
}

impl PackedF32 {
    /// Packs `w` (`n` rows of `k`, PyTorch's `[out, in]`), or `None` where the
    /// CPU has neither AVX-512F nor AVX2 + FMA, or `w` is too short.
    pub fn new(w: &[f32], n: usize, k: usize) -> Option<Self> {
        // WGINFER_F32GEMM=off: not packed (Linear then uses `gemm`), for A/B timing.
        if w.len() < n * k || std::env::var("WGINFER_F32GEMM").is_ok_and(|v| v == "off") {
            return None;
        }
        let isa = Isa::detect()?;
        Some(Self::pack(w, n, k, isa))
    }

    /// Packs `w` for `isa`'s kernel.
    fn pack(w: &[f32], n: usize, k: usize, isa: Isa) -> Self {
        let nr = isa.nr();
        let v = nr / 16;
        let panels = n.div_ceil(nr);
        let last_v = (n + nr - panels.max(1) * nr).div_ceil(16).max(1);
        let full = panels.saturating_sub(1) * k * v;
        let mut data = vec![Line::default(); full + k * last_v];
        // Panel b's outputs into d, `vb` vectors per input.
        let pack = |b: usize, d: &mut [Line], vb: usize| {
            for c in 0..nr.min(n - b * nr) {
                let row = &w[(b * nr + c) * k..(b * nr + c + 1) * k];
                for (p, &x) in row.iter().enumerate() {
                    d[p * vb + c / 16].0[c % 16] = x;
                }
            }
        };
        if k > 0 && n > 0 {
            let (head, tail) = data.split_at_mut(full);
            if n * k >= 1 << 18 {
                head.par_chunks_mut(k * v).enumerate().for_each(|(b, d)| pack(b, d, v));
            } else {
                head.chunks_mut(k * v).enumerate().for_each(|(b, d)| pack(b, d, v));
            }
            pack(panels - 1, tail, last_v);
        }
        Self {
            n,
            k,
            isa,
            last_v,
            data,
        }
    }

    /// 16-output vectors in panel `b` of the AVX-512 layout.
    fn vecs(&self, b: usize) -> usize {
        if (b + 1) * NR >= self.n {
            self.last_v
        } else {
            V
        }
    }

    /// Outputs.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs.
    pub fn k(&self) -> usize {
        self.k
    }

    /// `y [m, n] = x [m, k] · Wᵀ (+ bias [n])`, then `max(0, ·)` when
    /// `relu` (NaN and -0.0 pass, as the `Relu` op computes it) in the
    /// register tiles; every element of `y` written.
    ///
    /// # Panics
    /// If `x`, `bias` or `y` is shorter than the sizes say (callers check shapes).
    pub fn run(&self, x: &[f32], m: usize, bias: Option<&[f32]>, relu: bool, y: &mut [f32]) {
        assert!(y.len() >= m * self.n, "PackedF32::run sizes");
        // SAFETY: `y` holds `m·n` elements (checked).
        unsafe { self.run_into(x, m, (bias, relu), y.as_mut_ptr()) }
    }

    /// [`Self::run`] into a new vector, not zeroed first (every element is
    /// written by a K block's first tile before any is read).
    ///
    /// # Panics
    /// If `x` or `bias` is shorter than the sizes say.
    pub fn apply(&self, x: &[f32], m: usize, bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
        let len = m * self.n;
        let mut y = Vec::with_capacity(len);
        // SAFETY: the capacity holds `m·n` elements, and `run_into` writes
        // every one of them (the first K block stores every tile; k = 0
        // fills) before reading any.
        unsafe {
            self.run_into(x, m, (bias, relu), y.as_mut_ptr());
            y.set_len(len);
        }
        y
    }

    /// # Safety
    /// `y` must be valid for writes of `m·n` elements (it may be uninitialised).
    unsafe fn run_into(&self, x: &[f32], m: usize, (bias, relu): (Option<&[f32]>, bool), y: *mut f32) {
        let (n, k) = (self.n, self.k);
        assert!(
            x.len() >= m * k && bias.is_none_or(|b| b.len() >= n),
            "PackedF32::run sizes"
        );
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for i in 0..m {
                for j in 0..n {
                    let v = bias.map_or(0.0, |b| b[j]);
                    y.add(i * n + j).write(if relu && v < 0.0 { 0.0 } else { v });
                }
            }
            return;
        }
        // `new` packs only where the AVX-512 or the AVX2 kernel runs.
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("PackedF32 exists only on x86_64");
        #[cfg(target_arch = "x86_64")]
        {
            let out = Out {
                y,
                bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                relu,
            };
            if self.isa == Isa::Avx2 {
                self.run_avx2(x, m, out);
                return;
            }
            let panels = n.div_ceil(NR);
            let panel_tasks = panels.div_ceil(TASK_PANELS);
            // Rows per task: halved (down to two register tiles) while there
            // are fewer than four tasks per thread, so a thread that starts
            // late or is held up costs at most a small task's time.
            let mut rows = TASK_ROWS;
            while rows > 2 * MR && m.div_ceil(rows) * panel_tasks < 4 * super::pool::threads() {
                rows /= 2;
            }
            let row_tasks = m.div_ceil(rows);
            // Panel ranges outermost: a task's weight slice stays in L2 while
            // the row ranges go through it.
            let task = |t: usize| {
                let (i0, b0) = ((t % row_tasks) * rows, (t / row_tasks) * TASK_PANELS);
                let (i1, b1) = ((i0 + rows).min(m), (b0 + TASK_PANELS).min(panels));
                // SAFETY: AVX-512F was detected when the weight was packed;
                // the task reads rows i0..i1 of x (checked above), panels
                // b0..b1 of the packed weight, and writes rows i0..i1,
                // columns b0·NR..min(b1·NR, n) of y, which no other task writes.
                unsafe { self.block(x, out, (i0, i1), (b0, b1)) };
            };
            let tasks = row_tasks * panel_tasks;
            if m * n * k >= PARALLEL_MIN && super::pool::threads() > 1 && tasks > 1 {
                super::pool::for_each(tasks, task);
            } else {
                (0..tasks).for_each(task);
            }
        }
    }

    /// Rows `i0..i1` × panels `b0..b1`: K blocks outermost, then panels,
    /// then register tiles down the rows (the panel's K slice stays in L1).
    /// While the tiles of one panel slice run, they prefetch the next slice
    /// into L2, a share each (the weight of a model's layer is usually
    /// cold: it is read once per forward pass).
    #[cfg(target_arch = "x86_64")]
    unsafe fn block(&self, x: &[f32], out: Out, (i0, i1): (usize, usize), (b0, b1): (usize, usize)) {
        let (n, k) = (self.n, self.k);
        let w = self.data.as_ptr().cast::<f32>();
        // Panel b at input p.
        let at = |b: usize, p: usize| w.add(b * k * NR + p * self.vecs(b) * 16);
        let tiles = (i1 - i0).div_ceil(MR);
        // K blocks of equal size, at most KC.
        let step = k.div_ceil(k.div_ceil(KC));
        let mut p0 = 0;
        while p0 < k {
            let kc = (k - p0).min(step);
            for b in b0..b1 {
                let col = b * NR;
                // The slice after panel b's (panel b+1's, or the first
                // panel's in the next K block) and its 64-byte lines.
                let (pf, lines) = if b + 1 < b1 {
                    (at(b + 1, p0), kc * self.vecs(b + 1))
                } else if p0 + kc < k {
                    (at(b0, p0 + kc), (k - p0 - kc).min(step) * self.vecs(b0))
                } else {
                    (std::ptr::null(), 0)
                };
                // Lines of the next slice each tile prefetches.
                let share = lines.div_ceil(tiles);
                let mut i = i0;
                while i < i1 {
                    let rows = (i1 - i).min(MR);
                    let tt = (i - i0) / MR;
                    let first = (tt * share).min(lines);
                    let t = Tile {
                        a: x.as_ptr().add(i * k + p0),
                        lda: k,
                        w: at(b, p0),
                        kc,
                        c: out.y.add(i * n + col),
                        ldc: n,
                        cols: (n - col).min(NR),
                        bias: if out.bias.is_null() {
                            out.bias
                        } else {
                            out.bias.add(col)
                        },
                        accumulate: p0 > 0,
                        relu: out.relu && p0 + kc == k,
                        pf: if pf.is_null() { pf } else { pf.add(first * 16) },
                        pf_lines: (first + share).min(lines) - first,
                    };
                    match self.vecs(b) {
                        3 => kernel::tiles::<3>(rows, &t),
                        2 => kernel::tiles::<2>(rows, &t),
                        _ => kernel::tiles::<1>(rows, &t),
                    }
                    i += rows;
                }
            }
            p0 += kc;
        }
    }

    /// [`Self::run_into`] on the AVX2 kernel: tasks over panel ranges (one
    /// per thread where the panels allow, at most [`TASK_PANELS2`] panels)
    /// × row ranges of [`TASK_ROWS2`].
    #[cfg(target_arch = "x86_64")]
    fn run_avx2(&self, x: &[f32], m: usize, out: Out) {
        let panels = self.n.div_ceil(NR2);
        let threads = super::pool::threads();
        let parallel = m * self.n * self.k >= PARALLEL_MIN && threads > 1;
        let per = if parallel {
            panels.div_ceil(threads).clamp(1, TASK_PANELS2)
        } else {
            TASK_PANELS2
        };
        let (row_tasks, panel_tasks) = (m.div_ceil(TASK_ROWS2), panels.div_ceil(per));
        let task = |t: usize| {
            let (i0, b0) = ((t % row_tasks) * TASK_ROWS2, (t / row_tasks) * per);
            let (i1, b1) = ((i0 + TASK_ROWS2).min(m), (b0 + per).min(panels));
            // SAFETY: AVX2 and FMA were detected when the weight was packed;
            // the task reads rows i0..i1 of x (checked by the caller), panels
            // b0..b1 of the packed weight, and writes rows i0..i1, columns
            // b0·NR2..min(b1·NR2, n) of y, which no other task writes.
            unsafe { self.block_avx2(x, out, (i0, i1), (b0, b1)) };
        };
        let tasks = row_tasks * panel_tasks;
        if parallel && tasks > 1 {
            super::pool::for_each(tasks, task);
        } else {
            (0..tasks).for_each(task);
        }
    }

    /// Rows `i0..i1` × panels `b0..b1` on the AVX2 kernel: per panel, K
    /// blocks, then register tiles down the rows (the panel's K slice, 16
    /// KiB, stays in L1 while the rows pass over it).
    #[cfg(target_arch = "x86_64")]
    unsafe fn block_avx2(&self, x: &[f32], out: Out, (i0, i1): (usize, usize), (b0, b1): (usize, usize)) {
        let (n, k) = (self.n, self.k);
        let w = self.data.as_ptr().cast::<f32>();
        // K blocks of equal size, at most KC2.
        let step = k.div_ceil(k.div_ceil(KC2));
        for b in b0..b1 {
            let col = b * NR2;
            let mut p0 = 0;
            while p0 < k {
                let kc = (k - p0).min(step);
                let mut i = i0;
                while i < i1 {
                    let rows = (i1 - i).min(MR2);
                    let t = Tile {
                        a: x.as_ptr().add(i * k + p0),
                        lda: k,
                        w: w.add((b * k + p0) * NR2),
                        kc,
                        c: out.y.add(i * n + col),
                        ldc: n,
                        cols: (n - col).min(NR2),
                        bias: if out.bias.is_null() {
                            out.bias
                        } else {
                            out.bias.add(col)
                        },
                        accumulate: p0 > 0,
                        relu: out.relu && p0 + kc == k,
                        pf: std::ptr::null(),
                        pf_lines: 0,
                    };
                    match rows {
                        6 => kernel2::tile::<6>(&t),
                        5 => kernel2::tile::<5>(&t),
                        4 => kernel2::tile::<4>(&t),
                        3 => kernel2::tile::<3>(&t),
                        2 => kernel2::tile::<2>(&t),
                        _ => kernel2::tile::<1>(&t),
                    }
                    i += rows;
                }
                p0 += kc;
            }
        }
    }
}

/// The output and bias pointers and whether ReLU follows, shared by tasks
/// that write disjoint tiles.
#[derive(Clone, Copy)]
struct Out {
    y: *mut f32,
    bias: *const f32,
    relu: bool,
}
// SAFETY: tasks write disjoint elements of `y` (see `PackedF32::run`) and only read `bias`.
unsafe impl Send for Out {}
// SAFETY: shared across tasks only under the same disjoint-write rule as Send.
unsafe impl Sync for Out {}

/// One register tile: `x` at its first row and K block (`lda` apart), the
/// panel at the K block, `c` at the tile's first output (`ldc` apart),
/// `cols` valid outputs, the bias at the tile's first column (null: none).
/// `accumulate` adds to `c` (a later K block) instead of starting from the bias;
/// `relu` applies `max(0, ·)` before the store (the last K block).
/// `pf_lines` 64-byte lines from `pf` on are prefetched into L2 along the way.
struct Tile {
    a: *const f32,
    lda: usize,
    w: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    bias: *const f32,
    accumulate: bool,
    relu: bool,
    pf: *const f32,
    pf_lines: usize,
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::Tile;

    /// `rows` (1..=8) rows × `V·16` outputs: [`tile`] for that row count.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tiles<const V: usize>(rows: usize, t: &Tile) {
        match rows {
            8 => tile::<8, V>(t),
            7 => tile::<7, V>(t),
            6 => tile::<6, V>(t),
            5 => tile::<5, V>(t),
            4 => tile::<4, V>(t),
            3 => tile::<3, V>(t),
            2 => tile::<2, V>(t),
            _ => tile::<1, V>(t),
        }
    }

    /// `R` rows × `V·16` outputs over `t.kc` inputs: per input, `V` aligned
    /// panel loads and `R` broadcasts feeding `R·V` FMAs.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const R: usize, const V: usize>(t: &Tile) {
        let mut masks = [0 as __mmask16; V];
        for (v, mk) in masks.iter_mut().enumerate() {
            let c = t.cols.saturating_sub(v * 16).min(16);
            *mk = ((1u32 << c) - 1) as __mmask16;
        }
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if t.accumulate {
            for (r, a) in acc.iter_mut().enumerate() {
                for v in 0..V {
                    a[v] = _mm512_maskz_loadu_ps(masks[v], t.c.add(r * t.ldc + v * 16));
                }
            }
        } else if !t.bias.is_null() {
            for v in 0..V {
                let b = _mm512_maskz_loadu_ps(masks[v], t.bias.add(v * 16));
                for a in acc.iter_mut() {
                    a[v] = b;
                }
            }
        }
        let (mut a, mut w) = (t.a, t.w);
        // Prefetches per input: enough to cover pf_lines over kc inputs.
        let (per, mut pf, pf_end) = (t.pf_lines.div_ceil(t.kc), t.pf, t.pf.wrapping_add(t.pf_lines * 16));
        for _ in 0..t.kc {
            for _ in 0..per {
                if pf < pf_end {
                    _mm_prefetch::<_MM_HINT_T1>(pf.cast());
                    pf = pf.add(16);
                }
            }
            let mut wv = [_mm512_setzero_ps(); V];
            for (v, wr) in wv.iter_mut().enumerate() {
                *wr = _mm512_load_ps(w.add(v * 16));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*a.add(r * t.lda));
                for v in 0..V {
                    acc_r[v] = _mm512_fmadd_ps(xv, wv[v], acc_r[v]);
                }
            }
            a = a.add(1);
            w = w.add(V * 16);
        }
        if t.relu {
            // max(0, v) returns v when v is NaN and keeps -0.0, as `Relu` does.
            let zero = _mm512_setzero_ps();
            for a in acc.iter_mut() {
                for v in a.iter_mut() {
                    *v = _mm512_max_ps(zero, *v);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for v in 0..V {
                _mm512_mask_storeu_ps(t.c.add(r * t.ldc + v * 16), masks[v], a[v]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel2 {
    use std::arch::x86_64::*;

    use super::{Tile, NR2};

    /// A mask of the first `n` (0..=8) lanes.
    #[inline(always)]
    unsafe fn mask(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// `R` rows × [`NR2`] outputs over `t.kc` inputs: per input, two aligned
    /// panel loads and `R` broadcasts feeding `2·R` FMAs.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(t: &Tile) {
        let full = t.cols == NR2;
        let masks = [mask(t.cols.min(8)), mask(t.cols.saturating_sub(8))];
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if t.accumulate {
            for (r, a) in acc.iter_mut().enumerate() {
                for v in 0..2 {
                    a[v] = _mm256_maskload_ps(t.c.add(r * t.ldc + v * 8), masks[v]);
                }
            }
        } else if !t.bias.is_null() {
            for v in 0..2 {
                let b = _mm256_maskload_ps(t.bias.add(v * 8), masks[v]);
                for a in acc.iter_mut() {
                    a[v] = b;
                }
            }
        }
        let (mut a, mut w) = (t.a, t.w);
        for _ in 0..t.kc {
            let w0 = _mm256_load_ps(w);
            let w1 = _mm256_load_ps(w.add(8));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*a.add(r * t.lda));
                acc_r[0] = _mm256_fmadd_ps(xv, w0, acc_r[0]);
                acc_r[1] = _mm256_fmadd_ps(xv, w1, acc_r[1]);
            }
            a = a.add(1);
            w = w.add(NR2);
        }
        if t.relu {
            // max(0, v) returns v when v is NaN and keeps -0.0, as `Relu` does.
            let zero = _mm256_setzero_ps();
            for a in acc.iter_mut() {
                a[0] = _mm256_max_ps(zero, a[0]);
                a[1] = _mm256_max_ps(zero, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let c = t.c.add(r * t.ldc);
            if full {
                _mm256_storeu_ps(c, a[0]);
                _mm256_storeu_ps(c.add(8), a[1]);
            } else {
                _mm256_maskstore_ps(c, masks[0], a[0]);
                _mm256_maskstore_ps(c.add(8), masks[1], a[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], b: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = b.map_or(0.0f64, |b| b[j] as f64);
                for p in 0..k {
                    acc += x[i * k + p] as f64 * w[j * k + p] as f64;
                }
                y[i * n + j] = acc as f32;
            }
        }
        y
    }

    /// The kernels this CPU runs.
    fn isas() -> Vec<Isa> {
        let mut v = Vec::new();
        if super::super::vecops::has_avx512f() {
            v.push(Isa::Avx512);
        }
        if super::super::conv::has_avx2_fma() {
            v.push(Isa::Avx2);
        }
        if v.is_empty() {
            // Written past the harness's capture, so the skip shows in `cargo test` output.
            use std::io::Write;
            let _ = std::io::stderr().write_all(b"\nSKIPPED: no AVX-512F or AVX2\n");
        }
        v
    }

    #[test]
    fn matches_the_reference_on_odd_shapes() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 1, 5),
            (9, 17, 47),
            (8, 128, 48),
            (17, 129, 49),
            (33, 300, 97),
            (7, 257, 16),
            (40, 384, 100),
            (130, 5, 200),
            (64, 784, 33),
            (100, 520, 17),
            (130, 300, 200),
            (20, 64, 80),
            (9, 100, 512),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            for (isa, bias) in isas().into_iter().flat_map(|i| [(i, None), (i, Some(&b[..]))]) {
                let p = PackedF32::pack(&w, n, k, isa);
                let plain = reference(&x, &w, bias, m, k, n);
                for relu in [false, true] {
                    let want: Vec<f32> = plain.iter().map(|&e| if relu { e.max(0.0) } else { e }).collect();
                    let mut y = vec![f32::NAN; m * n];
                    p.run(&x, m, bias, relu, &mut y);
                    assert_eq!(p.apply(&x, m, bias, relu), y, "apply and run agree");
                    for (i, (g, e)) in y.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-5 * (k as f32).sqrt() * (1.0 + e.abs()) && (!relu || *g >= 0.0),
                            "{isa:?} {m}x{k}->{n} bias {} relu {relu}: y[{i}] = {g}, want {e}",
                            bias.is_some()
                        );
                    }
                }
            }
        }
    }
}
