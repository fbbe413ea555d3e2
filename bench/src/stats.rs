//! Small statistics for the benchmark: reading samples out of a Prometheus text
//! exposition, merging histograms across series, and quantiles (interpolated within a
//! histogram bucket like PromQL's `histogram_quantile`, or exact over raw samples).

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: &'a str,
    pub value: f64,
}

/// Every sample line of an exposition.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(|l| {
        if l.starts_with('#') || l.is_empty() {
            return None;
        }
        let (series, rest) = match l.find('{') {
            Some(i) => {
                let end = l[i..].find('}')? + i;
                (&l[..end + 1], &l[end + 1..])
            }
            None => l.split_at(l.find(' ')?),
        };
        let value = rest.split_whitespace().next()?.parse().ok()?;
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], &series[i + 1..series.len() - 1]),
            None => (series, ""),
        };
        Some(Sample {
            name,
            labels,
            value,
        })
    })
}

/// The value of label `key` in `a="x",b="y"` (values without escapes).
pub fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = labels;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"")?;
        let end = after.find('"')?;
        if k == key {
            return Some(&after[..end]);
        }
        rest = after[end + 1..].trim_start_matches(',');
    }
    None
}

/// The sum of the samples of `name` whose labels pass `keep`.
pub fn sum(text: &str, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
    samples(text)
        .filter(|s| s.name == name && keep(s.labels))
        .map(|s| s.value)
        .sum()
}

/// A cumulative histogram merged over every series of `name` (`…_bucket`): le → count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    pub fn from_text(text: &str, bucket_name: &str) -> Buckets {
        let mut m: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in samples(text).filter(|s| s.name == bucket_name) {
            let Some(le) = label(s.labels, "le") else {
                continue;
            };
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            m.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
        }
        let mut v: Vec<(f64, f64)> = m.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(v)
    }

    /// `self - earlier` (the observations between two scrapes).
    pub fn minus(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, c)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, c - before)
                })
                .collect(),
        )
    }

    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, c)| *c)
    }

    /// The `q` quantile, interpolated linearly within its bucket (None when empty).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, c) in &self.0 {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let width = c - prev.1;
                let frac = if width > 0.0 {
                    (rank - prev.1) / width
                } else {
                    1.0
                };
                return Some(prev.0 + (le - prev.0) * frac);
            }
            prev = (le, c);
        }
        Some(prev.0)
    }
}

/// The `q` quantile of raw samples (nearest rank; sorts in place).
pub fn percentile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

/// Bucket bounds growing by `factor` from `from` to at least `to` (seconds).
pub fn geometric(from: f64, to: f64, factor: f64) -> Vec<f64> {
    let mut v = vec![];
    let mut b = from;
    while b < to * factor {
        v.push((b * 1e7).round() / 1e7);
        b *= factor;
    }
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP x
x_bucket{dueslag="a",le="0.1"} 1
x_bucket{dueslag="a",le="0.2"} 3
x_bucket{dueslag="a",le="+Inf"} 4
x_bucket{dueslag="b",le="0.1"} 1
x_bucket{dueslag="b",le="0.2"} 1
x_bucket{dueslag="b",le="+Inf"} 1
y_total{dueslag="a",result="success"} 5
y_total{dueslag="b",result="timeout"} 2
z 7
"#;

    #[test]
    fn parses_sums_and_quantiles() {
        assert_eq!(sum(TEXT, "y_total", |_| true), 7.0);
        assert_eq!(
            sum(TEXT, "y_total", |l| label(l, "result") == Some("success")),
            5.0
        );
        assert_eq!(sum(TEXT, "z", |_| true), 7.0);
        let b = Buckets::from_text(TEXT, "x_bucket");
        assert_eq!(b.0, vec![(0.1, 2.0), (0.2, 4.0), (f64::INFINITY, 5.0)]);
        assert_eq!(b.count(), 5.0);
        // Rank 2.5 of 5: halfway into (0.1, 0.2] which holds 2 → 0.125.
        assert!((b.quantile(0.5).unwrap() - 0.125).abs() < 1e-9);
        assert_eq!(b.quantile(1.0), Some(0.2));
        assert_eq!(b.minus(&b).count(), 0.0);
        let mut v = vec![3.0, 1.0, 2.0, 4.0];
        assert_eq!(percentile(&mut v, 0.5), Some(2.0));
        assert_eq!(percentile(&mut v, 0.99), Some(4.0));
        assert_eq!(label(r#"a="1",le="+Inf""#, "le"), Some("+Inf"));
        assert_eq!(label(r#"a="1",le="+Inf""#, "b"), None);
    }
}
