//! Sampling parameters and the host sampler: greedy, temperature, top-k, top-p, min-p and
//! repetition penalty, with a seed that makes sampled output reproducible. Decoding samples
//! on the device (`Backend::sample`, per-row settings) with uniforms drawn here; the host
//! path below serves a repetition penalty, which needs each sequence's history, and applies
//! the same rule to the penalised logits with the same uniform.

use encore_tensor::SampleParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    /// 0 means no min-p cut.
    pub min_p: f32,
    /// 1.0 means no penalty (CTRL-style, over prompt and generated tokens: positive logits
    /// divided, negative multiplied).
    pub repetition_penalty: f32,
    /// OpenAI's, over the generated tokens only: `presence_penalty` is subtracted from the
    /// logit of every token generated so far, `frequency_penalty` times its count. In
    /// [-2, 2]; 0 means none.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub seed: u64,
    /// Keep generating past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// Return the log-probability of each generated token and of the `n` most likely
    /// alternatives (0: just the token's own).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            max_tokens: 64,
            stop: Vec::new(),
            seed: 0,
            ignore_eos: false,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Check every value; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!("--temperature must be a finite value >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("--top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(format!("--min-p must be in [0, 1), got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!("--repetition-penalty must be > 0, got {}", self.repetition_penalty));
        }
        for (flag, v) in
            [("--presence-penalty", self.presence_penalty), ("--frequency-penalty", self.frequency_penalty)]
        {
            if !(-2.0..=2.0).contains(&v) {
                return Err(format!("{flag} must be in [-2, 2], got {v}"));
            }
        }
        if self.max_tokens == 0 {
            return Err("--max-tokens must be at least 1".into());
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err("--stop strings must not be empty".into());
        }
        Ok(())
    }

    /// True when the next token is the argmax of the raw logits.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 && !self.has_penalties()
    }

    /// Any penalty that depends on the sequence's tokens (applied on the host: see
    /// `LlmEngine`'s host-sampled rows counter).
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next uniform for the device sampler, in `[0, 2^24)` (`Backend::sample`).
    pub fn uniform24(&mut self) -> i32 {
        self.rng.random_range(0..encore_tensor::SAMPLE_UNIFORM_SCALE as i32)
    }

    /// The device settings of these parameters (the filters the device applies).
    pub fn device_params(&self) -> SampleParams {
        let p = &self.params;
        if p.temperature > 0.0 {
            SampleParams {
                temperature: p.temperature,
                top_k: p.top_k.min(u32::MAX as usize) as u32,
                top_p: p.top_p,
                min_p: p.min_p,
            }
        } else {
            SampleParams::GREEDY
        }
    }

    /// The next token from one row of logits on the host, with the uniform `u24` (from
    /// [`Sampler::uniform24`]): the repetition penalty over `history` (prompt and generated
    /// ids), the presence and frequency penalties over `history[num_prompt..]` (generated
    /// ids), then exactly the device's rule (`encore_cpu::sample_row`, see
    /// `encore_tensor::SampleParams`), so host and device sampling are one rule over one
    /// random stream.
    pub fn sample(&mut self, logits: &[f32], history: &[u32], num_prompt: usize, u24: i32) -> u32 {
        let p = &self.params;
        let mut l: Vec<f32> = logits.to_vec();
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
            for &t in history.get(num_prompt..).unwrap_or(&[]) {
                *counts.entry(t).or_default() += 1;
            }
            for (t, n) in counts {
                if let Some(v) = l.get_mut(t as usize) {
                    *v -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
        if p.repetition_penalty != 1.0 {
            let mut seen = vec![false; l.len()];
            for &t in history {
                if let Some(s) = seen.get_mut(t as usize) {
                    if !*s {
                        *s = true;
                        let v = &mut l[t as usize];
                        *v = if *v > 0.0 { *v / p.repetition_penalty } else { *v * p.repetition_penalty };
                    }
                }
            }
        }
        let u = u24 as f64 / encore_tensor::SAMPLE_UNIFORM_SCALE as f64;
        encore_cpu::sample_row(&l, u, self.device_params())
    }
}

/// `log_softmax(logits)[token]` and the `top` most likely tokens with theirs (descending).
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32;
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < top || l > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (i as u32, l));
                best.truncate(top);
            }
        }
    }
    let own = logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| l - lse);
    (own, best.into_iter().map(|(i, l)| (i, l - lse)).collect())
}

/// First index of the largest value.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Where the earliest stop string ends in `text`, if any (the text is cut before it).
pub fn find_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text.find(s.as_str())).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams { temperature: t, seed: 7, ..Default::default() }
    }

    #[test]
    fn greedy_takes_first_max() {
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&[0.5, 2.0, 2.0, -1.0], &[], 0, 0), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_seed_matters() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams { temperature: 1.0, seed, ..Default::default() });
            (0..40)
                .map(|_| {
                    let u = s.uniform24();
                    s.sample(&logits, &[], 0, u)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_k_limits_support() {
        let logits = [1.0, 3.0, 2.0, 0.5];
        let mut s = Sampler::new(SamplingParams { temperature: 5.0, top_k: 1, ..params(5.0) });
        assert!((0..50).all(|_| {
            let u = s.uniform24();
            s.sample(&logits, &[], 0, u) == 1
        }));
        let mut s = Sampler::new(SamplingParams { temperature: 5.0, top_k: 2, ..params(5.0) });
        let got: Vec<u32> = (0..200)
            .map(|_| {
                let u = s.uniform24();
                s.sample(&logits, &[], 0, u)
            })
            .collect();
        assert!(got.iter().all(|&t| t == 1 || t == 2) && got.contains(&2));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps the first two
        let logits = [3.0, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(SamplingParams { top_p: 0.7, ..params(1.0) });
        let got: Vec<u32> = (0..300)
            .map(|_| {
                let u = s.uniform24();
                s.sample(&logits, &[], 0, u)
            })
            .collect();
        assert!(got.iter().all(|&t| t <= 1) && got.contains(&1));
    }

    #[test]
    fn min_p_cuts_unlikely_tokens() {
        let logits = [5.0, 4.9, 0.0, 0.0];
        let mut s = Sampler::new(SamplingParams { min_p: 0.5, ..params(1.0) });
        assert!((0..300).all(|_| {
            let u = s.uniform24();
            s.sample(&logits, &[], 0, u) <= 1
        }));
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens_only() {
        // token 1 is in the prompt (not penalised) and generated twice after it
        let logits = [1.0, 1.5, 0.2];
        let mut s = Sampler::new(SamplingParams { presence_penalty: 0.3, ..params(0.0) });
        assert_eq!(s.sample(&logits, &[1, 2], 2, 0), 1, "prompt tokens carry no presence penalty");
        assert_eq!(s.sample(&logits, &[2, 1], 1, 0), 1, "1.5 - 0.3 is still the largest");
        let mut s = Sampler::new(SamplingParams { presence_penalty: 0.3, frequency_penalty: 0.2, ..params(0.0) });
        assert_eq!(s.sample(&logits, &[2, 1, 1], 1, 0), 0, "1.5 - 0.3 - 2 * 0.2 = 0.8 < 1.0");
        let mut s = Sampler::new(SamplingParams { frequency_penalty: -2.0, ..params(0.0) });
        assert_eq!(s.sample(&logits, &[2], 0, 0), 2, "a negative penalty favours repeats");
        let bad = SamplingParams { presence_penalty: 2.5, ..params(0.0) };
        assert!(bad.validate().unwrap_err().contains("--presence-penalty"));
        assert!(!SamplingParams { frequency_penalty: 0.1, ..params(0.0) }.is_greedy());
    }

    #[test]
    fn repetition_penalty_changes_greedy_choice() {
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..params(0.0) });
        assert_eq!(s.sample(&[1.0, 1.5, 0.2], &[1], 0, 0), 0);
        assert_eq!(s.sample(&[1.0, 1.5, 0.2], &[], 0, 0), 1);
    }

    #[test]
    fn invalid_values_name_the_flag() {
        let bad = [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { min_p: 1.5, ..Default::default() },
            SamplingParams { repetition_penalty: 0.0, ..Default::default() },
            SamplingParams { max_tokens: 0, ..Default::default() },
        ];
        let flags = ["--temperature", "--top-p", "--min-p", "--repetition-penalty", "--max-tokens"];
        for (p, f) in bad.iter().zip(flags) {
            assert!(p.validate().unwrap_err().contains(f));
        }
        assert!(SamplingParams::default().validate().is_ok());
    }

    #[test]
    fn logprobs_are_normalised_and_sorted() {
        let (own, top) = logprobs(&[1.0, 3.0, 2.0], 2, 2);
        let lse = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln() as f32;
        assert!((own - (2.0 - lse)).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((top[0].1 - (3.0 - lse)).abs() < 1e-6);
    }

    #[test]
    fn stop_strings_cut_at_the_earliest() {
        let stop = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(find_stop("abc END x\n\n", &stop), Some(4));
        assert_eq!(find_stop("abc", &stop), None);
    }
}
