//! Pruning building blocks on plain weights: importance scores, masks to a
//! target sparsity (global or per layer), N:M masks, and channel scores.
//! The model-level transform is [`super::prune`](fn@super::prune).

/// How weights (or channels) are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Importance {
    /// `|w|`.
    Magnitude,
    /// First-order Taylor: `|∂L/∂w · w|` summed over a labelled calibration
    /// set (per mini-batch, so that contributions do not cancel).
    Taylor,
}

/// Weight magnitudes.
pub fn magnitude(w: &[f32]) -> Vec<f32> {
    w.iter().map(|v| v.abs()).collect()
}

/// First-order Taylor importance `|w · g|`, with `g` the loss gradient summed
/// over the calibration set.
pub fn taylor(w: &[f32], grad_sum: &[f32]) -> Vec<f32> {
    w.iter().zip(grad_sum).map(|(a, b)| (a * b).abs()).collect()
}

/// The score below which `sparsity` of `scores` fall (the k-th smallest):
/// masking `score <= threshold` removes exactly `round(sparsity·len)` values
/// when there are no ties.
pub fn threshold(scores: &[f32], sparsity: f32) -> Option<f32> {
    let k = (sparsity.clamp(0.0, 1.0) * scores.len() as f32).round() as usize;
    if k == 0 || scores.is_empty() {
        return None;
    }
    let mut s = scores.to_vec();
    let idx = k.min(s.len()) - 1;
    s.select_nth_unstable_by(idx, f32::total_cmp);
    Some(s[idx])
}

/// A keep-mask removing the lowest-scoring `sparsity` fraction exactly
/// (ties broken by position, earlier pruned first).
pub fn mask_lowest(scores: &[f32], sparsity: f32) -> Vec<bool> {
    let k = (sparsity.clamp(0.0, 1.0) * scores.len() as f32).round() as usize;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut keep = vec![true; scores.len()];
    for &i in order.iter().take(k) {
        keep[i] = false;
    }
    keep
}

/// An N:M keep-mask over rows of `cols`: in each group of `m` consecutive
/// columns, the `n` highest scores are kept.
pub fn mask_nm(scores: &[f32], cols: usize, n: usize, m: usize) -> Vec<bool> {
    let mut keep = vec![false; scores.len()];
    for (r, row) in scores.chunks(cols.max(1)).enumerate() {
        for g in (0..cols).step_by(m.max(1)) {
            let end = (g + m).min(cols);
            let mut order: Vec<usize> = (g..end).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for &c in order.iter().take(n) {
                keep[r * cols + c] = true;
            }
        }
    }
    keep
}

/// True when every group of `m` in every row keeps at most `n`.
pub fn is_nm(keep: &[bool], cols: usize, n: usize, m: usize) -> bool {
    keep.chunks(cols.max(1))
        .all(|row| row.chunks(m.max(1)).all(|g| g.iter().filter(|&&k| k).count() <= n))
}

/// Fraction of `false` in a mask.
pub fn sparsity(keep: &[bool]) -> f32 {
    if keep.is_empty() {
        return 0.0;
    }
    keep.iter().filter(|&&k| !k).count() as f32 / keep.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_hit_their_targets() {
        let s: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32).collect();
        let keep = mask_lowest(&s, 0.3);
        assert_eq!(keep.iter().filter(|&&k| !k).count(), 30);
        assert!(s.iter().zip(&keep).all(|(&v, &k)| k == (v >= 30.0)));
        let nm = mask_nm(&s, 20, 2, 4);
        assert!(is_nm(&nm, 20, 2, 4));
        assert_eq!(sparsity(&nm), 0.5);
        assert_eq!(threshold(&s, 0.3), Some(29.0));
    }
}
