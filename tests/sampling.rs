//! The sampler against hand-computed expectations: greedy is the argmax,
//! seeds reproduce, top-k / top-p / min-p keep the candidate sets worked out
//! by hand, draws follow softmax(logits / T) (a chi-square test), the
//! repetition penalty divides positive and multiplies negative logits as
//! llama.cpp does, and stop strings are found across token pieces.

use wginfer::generate::sample::{log_softmax, top_logprobs, Sampler, SamplingOptions, StopStrings};

/// A small LCG for test logits (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 20.0 - 10.0
    }
}

fn sampler(opts: SamplingOptions) -> Sampler {
    Sampler::new(opts).expect("valid options")
}

fn hot(temperature: f32, seed: u64) -> SamplingOptions {
    SamplingOptions {
        temperature,
        seed,
        ..Default::default()
    }
}

#[test]
fn greedy_is_the_first_largest_logit() {
    let mut rng = Lcg(7);
    let mut s = sampler(SamplingOptions::default());
    for _ in 0..50 {
        let logits: Vec<f32> = (0..1000).map(|_| rng.next()).collect();
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        assert_eq!(s.sample(&logits, &[]), best as u32);
    }
    assert_eq!(s.sample(&[1.0, 3.0, 3.0, 2.0], &[]), 1, "ties go to the lower id");
    assert_eq!(s.sample(&[f32::NAN, 0.5, f32::NAN], &[]), 1, "NaN is never the argmax");
}

#[test]
fn the_same_seed_gives_the_same_tokens() {
    let mut rng = Lcg(11);
    let steps: Vec<Vec<f32>> = (0..200).map(|_| (0..64).map(|_| rng.next() * 0.3).collect()).collect();
    let run = |seed| {
        let mut s = sampler(SamplingOptions {
            top_k: 40,
            top_p: 0.95,
            ..hot(0.8, seed)
        });
        steps.iter().map(|l| s.sample(l, &[])).collect::<Vec<u32>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(
        run(42),
        run(43),
        "different seeds should give different draws over 200 steps"
    );
}

#[test]
fn top_k_one_is_greedy() {
    let mut rng = Lcg(3);
    let mut greedy = sampler(SamplingOptions::default());
    let mut k1 = sampler(SamplingOptions {
        top_k: 1,
        ..hot(5.0, 9)
    });
    for _ in 0..50 {
        let logits: Vec<f32> = (0..300).map(|_| rng.next()).collect();
        assert_eq!(k1.sample(&logits, &[]), greedy.sample(&logits, &[]));
    }
}

/// Logits whose softmax is exactly `probs` (they sum to 1).
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

/// The ids drawn in 3000 draws.
fn support(opts: SamplingOptions, logits: &[f32]) -> Vec<u32> {
    let mut s = sampler(opts);
    let mut seen: Vec<u32> = (0..3000).map(|_| s.sample(logits, &[])).collect();
    seen.sort_unstable();
    seen.dedup();
    seen
}

#[test]
fn filters_keep_the_hand_computed_candidates() {
    // Probabilities 0.05, 0.5, 0.1, 0.2, 0.15 at ids 0..5: by rank 1, 3, 4, 2, 0.
    let logits = logits_of(&[0.05, 0.5, 0.1, 0.2, 0.15]);
    let cases: [(SamplingOptions, Vec<u32>); 7] = [
        (hot(1.0, 1), vec![0, 1, 2, 3, 4]),
        (
            SamplingOptions {
                top_k: 2,
                ..hot(1.0, 1)
            },
            vec![1, 3],
        ),
        (
            SamplingOptions {
                top_k: 3,
                ..hot(1.0, 1)
            },
            vec![1, 3, 4],
        ),
        // 0.5 < 0.6 <= 0.5 + 0.2.
        (
            SamplingOptions {
                top_p: 0.6,
                ..hot(1.0, 1)
            },
            vec![1, 3],
        ),
        // 0.7 < 0.8 <= 0.85.
        (
            SamplingOptions {
                top_p: 0.8,
                ..hot(1.0, 1)
            },
            vec![1, 3, 4],
        ),
        // p >= 0.35 * 0.5 = 0.175: 0.5 and 0.2.
        (
            SamplingOptions {
                min_p: 0.35,
                ..hot(1.0, 1)
            },
            vec![1, 3],
        ),
        // p >= 0.15 * 0.5 = 0.075: all but 0.05; then top-k 3 of those first.
        (
            SamplingOptions {
                min_p: 0.15,
                top_k: 3,
                ..hot(1.0, 1)
            },
            vec![1, 3, 4],
        ),
    ];
    for (opts, want) in cases {
        assert_eq!(support(opts.clone(), &logits), want, "{opts:?}");
    }
    let all_but_smallest = SamplingOptions {
        min_p: 0.15,
        ..hot(1.0, 2)
    };
    assert_eq!(support(all_but_smallest, &logits), [1, 2, 3, 4]);
}

#[test]
fn top_p_over_a_large_vocabulary() {
    // 1000 equal logits: top-p 0.5 keeps exactly 500 (ties by lower id).
    let flat = vec![0.25f32; 1000];
    let mut s = sampler(SamplingOptions {
        top_p: 0.5,
        ..hot(1.0, 4)
    });
    let mut seen = vec![false; 1000];
    for _ in 0..8_000 {
        seen[s.sample(&flat, &[]) as usize] = true;
    }
    assert!(seen[..500].iter().all(|&x| x) && !seen[500..].iter().any(|&x| x));

    // Falling logits -0.01 i: the smallest prefix holding 90% of the mass.
    let falling: Vec<f32> = (0..3000).map(|i| -0.01 * i as f32).collect();
    let weights: Vec<f64> = falling.iter().map(|&l| f64::from(l).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut sum = 0.0;
    let keep = weights.iter().take_while(|&&w| {
        let below = sum < 0.9 * total;
        sum += w;
        below
    });
    let want = keep.count();
    let mut s = sampler(SamplingOptions {
        top_p: 0.9,
        ..hot(1.0, 5)
    });
    let max = (0..5_000).map(|_| s.sample(&falling, &[])).max().expect("draws");
    assert!((max as usize) < want, "drew {max}, want ids below {want}");
    assert!(
        max as usize >= want - 20,
        "drew at most {max}; the kept tail reaches {want}"
    );
}

/// Pearson's chi-square of observed counts against expected probabilities.
fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .zip(probs)
        .map(|(&c, &p)| {
            let e = p * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

fn counts(opts: SamplingOptions, logits: &[f32], draws: usize) -> Vec<u64> {
    let mut s = sampler(opts);
    let mut counts = vec![0u64; logits.len()];
    for _ in 0..draws {
        counts[s.sample(logits, &[]) as usize] += 1;
    }
    counts
}

/// softmax(logits / t) over `keep`, zero elsewhere, in f64.
fn softmax_over(logits: &[f32], t: f64, keep: &[usize]) -> Vec<f64> {
    let w: Vec<f64> = (0..logits.len())
        .map(|i| {
            if keep.contains(&i) {
                (f64::from(logits[i]) / t).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

#[test]
fn draws_follow_softmax_of_logits_over_temperature() {
    let logits = [1.0f32, 0.2, -0.5, 2.0, 0.9, -1.5];
    // 99.9% quantiles of chi-square: 20.52 at 5 degrees of freedom, 13.82 at 2.
    for (t, seed) in [(0.7f32, 5u64), (1.0, 6), (1.8, 7)] {
        let c = counts(hot(t, seed), &logits, 40_000);
        let chi = chi_square(&c, &softmax_over(&logits, f64::from(t), &[0, 1, 2, 3, 4, 5]));
        assert!(chi < 20.52, "T = {t}: chi-square {chi:.2} for counts {c:?}");
    }
    // top-k 3 keeps ids 3, 0, 4 and renormalises over them.
    let c = counts(
        SamplingOptions {
            top_k: 3,
            ..hot(1.5, 8)
        },
        &logits,
        30_000,
    );
    let want = softmax_over(&logits, 1.5, &[0, 3, 4]);
    let (kept_c, kept_p): (Vec<u64>, Vec<f64>) = [0, 3, 4].iter().map(|&i| (c[i], want[i])).unzip();
    assert_eq!(
        c.iter().sum::<u64>(),
        kept_c.iter().sum::<u64>(),
        "only the top 3 are drawn: {c:?}"
    );
    let chi = chi_square(&kept_c, &kept_p);
    assert!(chi < 13.82, "top-k 3: chi-square {chi:.2} for counts {c:?}");
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    let greedy_penalty = |penalty: f32, last_n: usize| {
        sampler(SamplingOptions {
            repetition_penalty: penalty,
            repeat_last_n: last_n,
            ..Default::default()
        })
    };
    // Token 0 (2.0) was seen: 2.0 / 2 = 1.0 < 1.9, so token 3 wins.
    assert_eq!(greedy_penalty(2.0, 64).sample(&[2.0, -1.0, 0.5, 1.9], &[0, 1]), 3);
    assert_eq!(greedy_penalty(1.0, 64).sample(&[2.0, -1.0, 0.5, 1.9], &[0, 1]), 0);
    // Token 0 (-1.0) was seen: -1.0 * 2 = -2.0 < -1.5, so token 1 wins.
    assert_eq!(greedy_penalty(2.0, 64).sample(&[-1.0, -1.5], &[0]), 1);
    // Seen three times, penalised once: 3.0 / 2 = 1.5 > 1.4.
    assert_eq!(greedy_penalty(2.0, 64).sample(&[3.0, 1.4], &[0, 0, 0]), 0);
    // Only the last 2 tokens count: token 0 is outside the window.
    assert_eq!(greedy_penalty(2.0, 2).sample(&[2.0, 1.9, 0.0], &[0, 2, 2]), 0);
    assert_eq!(greedy_penalty(2.0, 3).sample(&[2.0, 1.9, 0.0], &[0, 2, 2]), 1);
    // History ids outside the vocabulary are ignored.
    assert_eq!(greedy_penalty(2.0, 64).sample(&[2.0, 1.9], &[7, 1_000_000]), 0);
}

#[test]
fn log_softmax_and_top_logprobs() {
    let logits = [1.0f32, 2.0, 3.0, 2.0];
    let lse = (1f64.exp() + 2f64.exp() + 3f64.exp() + 2f64.exp()).ln();
    let got = log_softmax(&logits);
    for (g, l) in got.iter().zip(logits) {
        assert!((f64::from(*g) - (f64::from(l) - lse)).abs() < 1e-6, "{got:?}");
    }
    let top = top_logprobs(&got, 3);
    let ids: Vec<u32> = top.iter().map(|t| t.id).collect();
    assert_eq!(ids, [2, 1, 3], "descending, equal values by lower id");
    assert_eq!(top[0].logprob, got[2]);
    assert_eq!(top_logprobs(&got, 10).len(), 4);
    assert!(top_logprobs(&got, 0).is_empty());
    assert!(log_softmax(&[]).is_empty());
}

#[test]
fn stop_strings_span_pieces() {
    let mut s = StopStrings::new(vec!["</s>".into(), "STOP".into()]);
    assert_eq!(s.push("Hello <"), ("Hello ".to_string(), false));
    assert_eq!(s.push("/"), (String::new(), false));
    assert_eq!(s.push("s> and more"), (String::new(), true));
    assert_eq!(s.push("later"), (String::new(), true));
    assert_eq!(s.flush(), "");

    // A held prefix that turns out not to be a stop string is released.
    let mut s = StopStrings::new(vec!["</s>".into()]);
    assert_eq!(s.push("a<"), ("a".to_string(), false));
    assert_eq!(s.push("b"), ("<b".to_string(), false));
    assert_eq!(s.push("x</"), ("x".to_string(), false));
    assert_eq!(s.flush(), "</");

    // Across three pieces, the text before the stop is kept.
    let mut s = StopStrings::new(vec!["STOP".into(), String::new()]);
    let mut out = String::new();
    let mut stopped = false;
    for piece in ["abc S", "T", "O", "Pxyz"] {
        let (text, stop) = s.push(piece);
        out += &text;
        stopped |= stop;
    }
    assert_eq!((out.as_str(), stopped), ("abc ", true));

    // The earliest of two stops wins; multi-byte text is cut on characters.
    let mut s = StopStrings::new(vec!["é!".into(), "fé".into()]);
    assert_eq!(s.push("caf"), ("ca".to_string(), false));
    assert_eq!(s.push("é!"), (String::new(), true));
    let mut s = StopStrings::new(vec!["é!".into()]);
    assert_eq!(s.push("café"), ("caf".to_string(), false));
    assert_eq!(s.push("?"), ("é?".to_string(), false));
}
