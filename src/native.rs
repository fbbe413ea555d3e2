//! Native histograms, and the protobuf wire format of the per-dueslag series.
//!
//! `prometheus-client` 0.26 has native histograms and a protobuf encoder, but the encoder
//! first builds every `MetricFamily` as Rust structs, with every label name and value copied
//! twice into owned strings: at 10,000 dueslag that took ~220 ms and tens of MB per scrape,
//! three times the text exposition. The per-dueslag series (almost all of the exposition)
//! are therefore written here straight into the wire format of `metrics.proto`
//! (`io.prometheus.client.MetricFamily`, length-delimited), family by family; the few global
//! families still go through the crate. Its `Histogram` keeps its buckets private, so the
//! native histogram is ours too (schema, bucket index and span/delta encoding as
//! client_golang has them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// The resolution of every native histogram: schema 3, bucket boundaries at 2^(i/8), each
/// bucket ≈ ×1.09 wide, so a quantile is within ±4.4 % of the true value. 1 ms to 5 min
/// spans 18.2 powers of two, 146 buckets at schema 3; a dueslag fills only the few its
/// round trips fall into.
pub const SCHEMA: i32 = 3;
/// More buckets than 1 ms – 5 min needs at [`SCHEMA`]: only a histogram whose observations
/// spread wider (down to microseconds) loses resolution (schema 2, 1, …) rather than grow.
pub const MAX_BUCKETS: usize = 160;
/// Observations at or below this (2^-128, client_golang's default) go to the zero bucket. A
/// positive threshold is also what marks the histogram as native on the wire.
pub const ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// A native histogram, with classic buckets beside it (`+Inf` only when none are given)
/// for the text formats, which cannot carry native buckets.
#[derive(Clone, Debug)]
pub struct NativeHistogram(Arc<Mutex<State>>);

#[derive(Debug)]
pub struct State {
    pub sum: f64,
    pub count: u64,
    /// Upper bound and count of each classic bucket (not cumulative), `+Inf` last.
    pub classic: Vec<(f64, u64)>,
    pub schema: i32,
    pub zero_count: u64,
    /// Index and count of every populated positive bucket, by index.
    pub buckets: Vec<(i32, u64)>,
}

impl NativeHistogram {
    pub fn new(classic: &[f64]) -> Self {
        NativeHistogram(Arc::new(Mutex::new(State {
            sum: 0.0,
            count: 0,
            classic: classic
                .iter()
                .copied()
                .filter(|b| b.is_finite())
                .chain([f64::INFINITY])
                .map(|b| (b, 0))
                .collect(),
            schema: SCHEMA,
            zero_count: 0,
            buckets: Vec::new(),
        })))
    }

    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.sum += v;
        s.count += 1;
        if let Some(b) = s.classic.iter_mut().find(|(le, _)| v <= *le) {
            b.1 += 1;
        }
        if v <= ZERO_THRESHOLD {
            // Latencies are never negative; a clock step backwards counts as zero.
            s.zero_count += 1;
            return;
        }
        let i = bucket_index(s.schema, v);
        match s.buckets.binary_search_by_key(&i, |b| b.0) {
            Ok(at) => s.buckets[at].1 += 1,
            Err(at) => s.buckets.insert(at, (i, 1)),
        }
        while s.buckets.len() > MAX_BUCKETS && s.schema > -4 {
            s.schema -= 1;
            let mut merged: Vec<(i32, u64)> = Vec::with_capacity(s.buckets.len() / 2 + 1);
            for &(i, c) in &s.buckets {
                // Bucket i of schema s+1 lies in bucket ceil(i / 2) of schema s.
                let j = (i + 1).div_euclid(2);
                match merged.last_mut() {
                    Some(last) if last.0 == j => last.1 += c,
                    _ => merged.push((j, c)),
                }
            }
            s.buckets = merged;
        }
    }

    /// Reads the state under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The index of the bucket (2^((i-1)/2^schema), 2^(i/2^schema)] that holds `v` > 0 (as
/// client_golang computes it, from the mantissa, exact at the boundaries).
pub fn bucket_index(schema: i32, v: f64) -> i32 {
    let (frac, exp) = frexp(v);
    if schema > 0 {
        let per = 1 << schema;
        // Smallest k with 0.5 * 2^(k/per) >= frac (per when none of the per bounds is).
        let mut k = ((frac.log2() + 1.0) * f64::from(per)).ceil() as i32;
        k = k.clamp(0, per);
        let bound = |k: i32| 0.5 * (f64::from(k) / f64::from(per)).exp2();
        while k > 0 && bound(k - 1) >= frac {
            k -= 1;
        }
        while k < per && bound(k) < frac {
            k += 1;
        }
        k + (exp - 1) * per
    } else {
        // frac == 0.5 is the upper boundary of the bucket below.
        let e = if frac == 0.5 { exp - 1 } else { exp };
        (e + (1 << -schema) - 1) >> -schema
    }
}

/// `v = frac × 2^exp` with `frac` in [0.5, 1), for positive normal `v`.
fn frexp(v: f64) -> (f64, i32) {
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        // Subnormal: scale into the normal range first.
        let (f, e) = frexp(v * 2f64.powi(64));
        return (f, e - 64);
    }
    let frac = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (frac, exp - 1022)
}

impl TypedMetric for NativeHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

/// The text formats: the classic buckets (and `_count`, `_sum`).
impl EncodeMetric for NativeHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        self.with(|s| {
            encoder.encode_histogram(
                s.sum,
                s.count,
                &s.classic,
                None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
            )
        })
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// `io.prometheus.client.MetricType`.
#[derive(Clone, Copy)]
pub enum Kind {
    Counter = 0,
    Gauge = 1,
    Histogram = 4,
}

/// Writes one `MetricFamily` message: [`Family::metric`] for each series, then
/// [`Family::finish`] appends it, length-delimited, to the exposition.
pub struct Family {
    body: Vec<u8>,
    metric: Vec<u8>,
    kind: Kind,
    count: usize,
}

impl Family {
    pub fn new(name: &str, help: &str, kind: Kind) -> Family {
        let mut body = Vec::with_capacity(64 * 1024);
        string(&mut body, 1, name);
        string(&mut body, 2, help);
        if kind as u64 != 0 {
            key(&mut body, 3, 0);
            varint(&mut body, kind as u64);
        }
        Family {
            body,
            metric: Vec::with_capacity(256),
            kind,
            count: 0,
        }
    }

    /// A counter or gauge (as the family's kind) with these labels.
    pub fn value<'a>(&mut self, labels: impl IntoIterator<Item = (&'a str, &'a str)>, v: f64) {
        self.labels(labels);
        // Gauge (2) or Counter (3), each a message with `double value = 1`.
        let field = match self.kind {
            Kind::Counter => 3,
            _ => 2,
        };
        key(&mut self.metric, field, 2);
        if v == 0.0 {
            varint(&mut self.metric, 0);
        } else {
            varint(&mut self.metric, 9);
            double(&mut self.metric, 1, v);
        }
        self.end_metric();
    }

    /// A native histogram with these labels, its classic buckets beside it when
    /// `classic` (a Prometheus with scrape_classic_histograms stores those too).
    pub fn histogram<'a>(
        &mut self,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        h: &NativeHistogram,
        classic: bool,
    ) {
        self.labels(labels);
        let mut m = Vec::with_capacity(128);
        h.with(|s| {
            key(&mut m, 1, 0);
            varint(&mut m, s.count);
            double(&mut m, 2, s.sum);
            if classic {
                let mut cumulative = 0;
                for &(le, c) in &s.classic {
                    cumulative += c;
                    let mut b = Vec::with_capacity(16);
                    key(&mut b, 1, 0);
                    varint(&mut b, cumulative);
                    double(&mut b, 2, le);
                    bytes(&mut m, 3, &b);
                }
            }
            key(&mut m, 5, 0);
            varint(&mut m, zigzag(i64::from(s.schema)));
            double(&mut m, 6, ZERO_THRESHOLD);
            key(&mut m, 7, 0);
            varint(&mut m, s.zero_count);
            // Spans: runs of consecutive indexes, each offset from the end of the one
            // before (the first from 0); deltas: each count minus the one before.
            let mut spans: Vec<(i32, u32)> = Vec::new();
            let mut prev: Option<i32> = None;
            for &(i, _) in &s.buckets {
                match prev {
                    Some(p) if i == p + 1 => spans.last_mut().expect("a span").1 += 1,
                    Some(p) => spans.push((i - p - 1, 1)),
                    None => spans.push((i, 1)),
                }
                prev = Some(i);
            }
            if spans.is_empty() {
                // No bucket yet: an empty span still says "native" to every parser.
                spans.push((0, 0));
            }
            for (offset, length) in spans {
                let mut b = Vec::with_capacity(8);
                key(&mut b, 1, 0);
                varint(&mut b, zigzag(i64::from(offset)));
                key(&mut b, 2, 0);
                varint(&mut b, u64::from(length));
                bytes(&mut m, 12, &b);
            }
            if !s.buckets.is_empty() {
                let mut d = Vec::with_capacity(s.buckets.len() * 2);
                let mut last = 0i64;
                for &(_, c) in &s.buckets {
                    let c = c as i64;
                    varint(&mut d, zigzag(c - last));
                    last = c;
                }
                bytes(&mut m, 13, &d);
            }
        });
        bytes(&mut self.metric, 7, &m);
        self.end_metric();
    }

    fn labels<'a>(&mut self, labels: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.metric.clear();
        for (name, value) in labels {
            key(&mut self.metric, 1, 2);
            let len =
                2 + varint_len(name.len()) + name.len() + varint_len(value.len()) + value.len();
            varint(&mut self.metric, len as u64);
            string(&mut self.metric, 1, name);
            string(&mut self.metric, 2, value);
        }
    }

    fn end_metric(&mut self) {
        bytes(&mut self.body, 4, &self.metric);
        self.count += 1;
    }

    /// Appends the family (length-delimited) to `out`, unless it has no series.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.count > 0 {
            varint(out, self.body.len() as u64);
            out.extend_from_slice(&self.body);
        }
    }
}

fn key(buf: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire_type));
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: usize) -> usize {
    let bits = usize::BITS - (v | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn double(buf: &mut Vec<u8>, field: u32, v: f64) {
    key(buf, field, 1);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, 2);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn string(buf: &mut Vec<u8>, field: u32, s: &str) {
    bytes(buf, field, s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_boundaries_are_inclusive_upper_bounds() {
        // Schema 3: bucket i is (2^((i-1)/8), 2^(i/8)].
        assert_eq!(bucket_index(3, 1.0), 0);
        assert_eq!(bucket_index(3, 1.0001), 1);
        assert_eq!(bucket_index(3, 0.9999), 0);
        assert_eq!(bucket_index(3, 2.0), 8);
        assert_eq!(bucket_index(3, 2f64.powf(1.0 / 8.0)), 1);
        assert_eq!(bucket_index(3, 0.5), -8);
        for i in -200..200 {
            let upper = (f64::from(i) / 8.0).exp2();
            let got = bucket_index(3, upper * (1.0 - 1e-12));
            assert_eq!(got, i, "just below 2^({i}/8)");
            assert_eq!(
                bucket_index(3, upper * (1.0 + 1e-12)),
                i + 1,
                "just above 2^({i}/8)"
            );
        }
        // Schema 0: (2^(i-1), 2^i]; schema -1: (4^(i-1), 4^i].
        assert_eq!(bucket_index(0, 1.0), 0);
        assert_eq!(bucket_index(0, 3.0), 2);
        assert_eq!(bucket_index(0, 4.0), 2);
        assert_eq!(bucket_index(-1, 4.0), 1);
        assert_eq!(bucket_index(-1, 5.0), 2);
        assert_eq!(bucket_index(-1, 0.5), 0);
    }

    #[test]
    fn too_many_buckets_lower_the_resolution() {
        let h = NativeHistogram::new(&[]);
        // A microsecond to an hour: 31 powers of two, ~250 buckets at schema 3.
        let mut v = 1e-6;
        while v < 3600.0 {
            h.observe(v);
            v *= 1.05;
        }
        h.with(|s| {
            assert!(s.buckets.len() <= MAX_BUCKETS, "{}", s.buckets.len());
            assert_eq!(s.schema, 2);
            assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), s.count);
            assert_eq!(s.classic, vec![(f64::INFINITY, s.count)]);
        });
    }
}
