//! Plumbing for the elementwise and row-wise CPU kernels of the ops (GELU,
//! LayerNorm, binary arithmetic, attention's softmax): run-time AVX-512
//! detection, when to hand work to rayon, and building an output vector
//! without zero-filling it first.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Whether the CPU has AVX-512 F (what the ops' explicit 16-lane kernels
/// need; detected at run time, the crate being built for baseline x86-64).
#[inline]
pub fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether `units` of work are worth splitting across rayon's threads: only
/// with two or more threads and at least `min` units. The callers are not
/// pool threads, so every parallel loop pays a hand-off to the pool and a
/// wake-up (microseconds), even with one thread.
#[inline]
pub fn parallel(units: usize, min: usize) -> bool {
    units >= min && rayon::current_num_threads() > 1
}

/// A vector of `n` elements filled chunk by chunk: `fill(start, out)` gets
/// the chunk of `chunk` elements (the last one shorter) that begins at
/// element `start`. The chunks run on rayon's threads when `parallel`. The
/// vector is not zeroed first (for a large output that is a pass over memory
/// of its own).
///
/// # Safety
/// `fill` must initialise every element of each slice it is given.
pub unsafe fn build<T: Send>(
    n: usize,
    chunk: usize,
    parallel: bool,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    let chunk = chunk.max(1);
    let spare = &mut v.spare_capacity_mut()[..n];
    if parallel {
        spare
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| fill(i * chunk, c));
    } else {
        for (i, c) in spare.chunks_mut(chunk).enumerate() {
            fill(i * chunk, c);
        }
    }
    // SAFETY: the chunks cover `0..n`, and the caller's `fill` initialised
    // every element of each.
    unsafe { v.set_len(n) };
    v
}

/// The mask of the first `len` lanes of 16 (`len` < 16 for a tail, else all).
#[inline]
pub fn lanes16(len: usize) -> u16 {
    if len >= 16 {
        u16::MAX
    } else {
        ((1u32 << len) - 1) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_fills_every_chunk_in_order() {
        for par in [false, true] {
            // SAFETY: the closure writes every element it is given.
            let v: Vec<usize> = unsafe {
                build(1000, 64, par, |start, out| {
                    for (i, o) in out.iter_mut().enumerate() {
                        o.write(start + i);
                    }
                })
            };
            assert_eq!(v, (0..1000).collect::<Vec<_>>());
        }
        // SAFETY: nothing to fill.
        let e: Vec<f32> = unsafe { build(0, 16, false, |_, _| {}) };
        assert!(e.is_empty());
        assert_eq!(lanes16(0), 0);
        assert_eq!(lanes16(3), 0b111);
        assert_eq!(lanes16(16), u16::MAX);
    }
}
