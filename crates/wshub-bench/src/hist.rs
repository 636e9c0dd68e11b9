//! The latency histogram: fixed log-linear buckets over microseconds (exact below 64 µs,
//! then 64 buckets per power of two, so any reported percentile is within 1.6% of the
//! true value), mergeable across workers and sent over the worker pipe in sparse form.

use serde::{Deserialize, Serialize};

/// Values below this are counted exactly, one bucket each.
const LINEAR: u64 = 64;
/// Sub-buckets per power of two above `LINEAR` (a power of two itself).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered above `LINEAR`: up to 2^46 µs (about 2.2 years).
const OCTAVES: usize = 40;
const BUCKETS: usize = LINEAR as usize + OCTAVES * SUB as usize;

/// A histogram of microsecond values.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The wire form: only non-empty buckets, plus the exact aggregates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Sparse {
    /// (bucket index, count) for every non-empty bucket.
    pub(crate) buckets: Vec<(u32, u64)>,
    /// Exact sum of all values (µs).
    pub(crate) sum: u64,
    /// Exact minimum (µs); meaningless when empty.
    pub(crate) min: u64,
    /// Exact maximum (µs).
    pub(crate) max: u64,
}

fn index(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= 6
    let octave = (exponent - SUB_BITS) as usize;
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    let sub = ((value >> (exponent - SUB_BITS)) & (SUB - 1)) as usize;
    LINEAR as usize + octave * SUB as usize + sub
}

/// The highest value that lands in bucket `index`.
fn upper(index: usize) -> u64 {
    if index < LINEAR as usize {
        return index as u64;
    }
    let octave = ((index - LINEAR as usize) / SUB as usize) as u32;
    let sub = ((index - LINEAR as usize) % SUB as usize) as u64;
    let shift = octave;
    let low = (SUB + sub) << shift;
    low + (1u64 << shift) - 1
}

impl Histogram {
    /// An empty histogram.
    pub(crate) fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Counts one value.
    #[inline]
    pub(crate) fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.total += 1;
        self.sum = self.sum.saturating_add(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// How many values were recorded.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// The largest value recorded (0 when empty).
    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The mean (0 when empty).
    pub(crate) fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1): the upper edge of the bucket holding it, capped at
    /// the exact maximum. 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper(i).min(self.max).max(self.min);
            }
        }
        self.max
    }

    /// Adds another histogram's counts to this one.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The wire form.
    pub(crate) fn to_sparse(&self) -> Sparse {
        Sparse {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            sum: self.sum,
            min: self.min,
            max: self.max,
        }
    }

    /// Back from the wire form (unknown bucket indexes are ignored).
    pub(crate) fn from_sparse(sparse: &Sparse) -> Self {
        let mut hist = Self::new();
        for &(i, c) in &sparse.buckets {
            if let Some(slot) = hist.counts.get_mut(i as usize) {
                *slot += c;
                hist.total += c;
            }
        }
        hist.sum = sparse.sum;
        hist.min = sparse.min;
        hist.max = sparse.max;
        hist
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            63,
            64,
            65,
            127,
            128,
            1000,
            12_345,
            1 << 30,
            1 << 45,
        ] {
            let i = index(v);
            assert!(i >= last, "{v}");
            last = i;
            let up = upper(i);
            assert!(up >= v, "{v} -> bucket {i} upper {up}");
            assert!((up - v) as f64 <= v as f64 / 60.0 + 1.0, "{v}: {up}");
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for v in 1..=1000u64 {
            if v % 2 == 0 {
                a.record(v * 100);
            } else {
                b.record(v * 100);
            }
        }
        let b = Histogram::from_sparse(&b.to_sparse());
        a.merge(&b);
        assert_eq!(a.len(), 1000);
        assert_eq!(a.max(), 100_000);
        let p50 = a.quantile(0.5) as f64;
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.02, "{p50}");
        let p99 = a.quantile(0.99) as f64;
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.02, "{p99}");
        assert_eq!(a.quantile(1.0), 100_000);
        assert!((a.mean() - 50_050.0).abs() < 1.0);
    }

    #[test]
    fn empty_is_zero() {
        let h = Histogram::new();
        assert_eq!(h.quantile(0.99), 0);
        assert_eq!(h.mean(), 0.0);
    }
}
