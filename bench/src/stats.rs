//! The one percentile every benchmark reports with.

/// The nearest-rank percentile (`p` in 0..=100) of values in ascending order; `None` when there
/// are none.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 50.0), Some(5));
        assert_eq!(percentile(&v, 90.0), Some(9));
        assert_eq!(percentile(&v, 99.0), Some(10));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile::<i64>(&[], 50.0), None);
    }

    #[test]
    fn durations_too() {
        let v: Vec<std::time::Duration> = (1..=4).map(std::time::Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Some(std::time::Duration::from_millis(2)));
        assert_eq!(percentile(&v, 99.0), Some(std::time::Duration::from_millis(4)));
    }
}
