//! Decode batch buckets: a decode step of `n` rows runs in the smallest bucket >= n, padded
//! with sentinel rows, so one captured graph per bucket serves every batch size.

/// 1, 2, 4, 8, then every 8 up to `max_batch` (which is always the last bucket).
pub fn batch_buckets(max_batch: usize) -> Vec<usize> {
    let mut b: Vec<usize> = [1, 2, 4, 8].into_iter().filter(|&x| x < max_batch).collect();
    let mut x = 16;
    while x < max_batch {
        b.push(x);
        x += 8;
    }
    if max_batch > 0 {
        b.push(max_batch);
    }
    b
}

/// Token buckets of steps with prefill rows, up to `max_tokens` (always the last): 16, 32,
/// 64, then every 64 up to 512, then every 128. A step pads to the smallest that holds it,
/// so padding stays under 64 rows (128 above 512 tokens) and the graphs few.
pub fn token_buckets(max_tokens: usize) -> Vec<usize> {
    let mut b: Vec<usize> = [16, 32, 64].into_iter().filter(|&x| x < max_tokens).collect();
    let mut x = 128;
    while x < max_tokens {
        b.push(x);
        x += if x < 512 { 64 } else { 128 };
    }
    if max_tokens > 0 {
        b.push(max_tokens);
    }
    b
}

/// The smallest bucket holding `n` rows.
pub fn bucket_for(n: usize, buckets: &[usize]) -> Option<usize> {
    buckets.iter().copied().find(|&b| b >= n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_batch_size_once() {
        assert_eq!(batch_buckets(1), vec![1]);
        assert_eq!(batch_buckets(8), vec![1, 2, 4, 8]);
        assert_eq!(batch_buckets(12), vec![1, 2, 4, 8, 12]);
        assert_eq!(batch_buckets(32), vec![1, 2, 4, 8, 16, 24, 32]);
        for max in 1..80 {
            let b = batch_buckets(max);
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
            assert_eq!(*b.last().unwrap(), max);
            for n in 1..=max {
                let k = bucket_for(n, &b).unwrap();
                assert!(k >= n && k <= max);
            }
            assert_eq!(bucket_for(max + 1, &b), None);
        }
    }

    #[test]
    fn token_buckets_pad_within_a_power_of_two_then_by_less_than_64_or_128() {
        assert!(token_buckets(0).is_empty());
        assert_eq!(token_buckets(100), vec![16, 32, 64, 100]);
        assert_eq!(token_buckets(512), vec![16, 32, 64, 128, 192, 256, 320, 384, 448, 512]);
        assert_eq!(token_buckets(1000), vec![16, 32, 64, 128, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1000]);
        for max in 1..1200 {
            let b = token_buckets(max);
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
            assert_eq!(*b.last().unwrap(), max);
            for n in 1..=max {
                let k = bucket_for(n, &b).unwrap();
                let ok = if n <= 64 { k <= (2 * n).max(16) } else { k - n < if n <= 512 { 64 } else { 128 } };
                assert!(k >= n && ok, "{n} -> {k} ({b:?})");
            }
        }
    }
}
