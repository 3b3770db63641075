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
}
