//! `--shard=i/n`: run only the dueslag whose stable hash falls in shard i of n, so that
//! several replicas can share one configuration without probing a dueslag twice.
//!
//! `--shard=auto/n` takes `i` from the pod's ordinal, as kube-state-metrics does: the pods
//! of a StatefulSet are named `<set>-0` … `<set>-(n-1)`, and pod `k` runs shard `k+1` of
//! `n`. A StatefulSet never runs two pods of one ordinal, not even during a drain, so no
//! shard ever has two consumers (deploy/sharding.md).

use std::fmt;
use std::str::FromStr;

/// Shard `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// FNV-1a, 64 bit: stable across versions and platforms (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Shard {
    /// True when this shard runs the dueslag `name`.
    pub fn owns(&self, name: &str) -> bool {
        fnv1a(name.as_bytes()) % u64::from(self.count) == u64::from(self.index - 1)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or("expected i/n, e.g. 1/3")?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("{i:?} is not a number"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{n:?} is not a number"))?;
        if count == 0 || index == 0 || index > count {
            return Err(format!("shard {index}/{count}: need 1 <= i <= n"));
        }
        Ok(Shard { index, count })
    }
}

/// The `--shard` argument: a fixed shard, or `auto/n`, resolved at start from the pod name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardArg {
    Fixed(Shard),
    /// Shard `ordinal + 1` of `count`, the ordinal from the pod name.
    Auto {
        count: u32,
    },
}

impl FromStr for ShardArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((i, n)) if i.trim() == "auto" => {
                let count: u32 = n
                    .trim()
                    .parse()
                    .map_err(|_| format!("{n:?} is not a number"))?;
                if count == 0 {
                    return Err("auto/n: need n >= 1".into());
                }
                Ok(ShardArg::Auto { count })
            }
            _ => s
                .parse()
                .map(ShardArg::Fixed)
                .map_err(|e| format!("{e} (or auto/n: the index from the pod's ordinal)")),
        }
    }
}

/// The ordinal of a StatefulSet pod: the number after the name's last `-`.
pub fn ordinal(pod: &str) -> Option<u32> {
    let (_, n) = pod.rsplit_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

impl ShardArg {
    /// The shard this process runs. `pod` is this pod's name (`POD_NAME`, else the host
    /// name, which is the pod name in a StatefulSet). A pod whose ordinal has no shard (the
    /// StatefulSet was scaled beyond `n`) is refused: it would probe nothing while looking
    /// healthy, and scaling down again would then leave shards without a pod.
    pub fn resolve(self, pod: Option<&str>) -> Result<Shard, String> {
        let count = match self {
            ShardArg::Fixed(s) => return Ok(s),
            ShardArg::Auto { count } => count,
        };
        let pod = pod.ok_or("auto: no pod name (set POD_NAME, or run in a StatefulSet)")?;
        let k = ordinal(pod).ok_or_else(|| {
            format!("auto: pod name {pod:?} does not end in an ordinal (-0, -1, …); is it a StatefulSet pod?")
        })?;
        if k >= count {
            return Err(format!(
                "auto/{count}: pod {pod:?} has ordinal {k}, but there are only {count} shards (ordinals 0 to {}); \
                 make the StatefulSet's replicas and n in --shard=auto/n agree",
                count - 1
            ));
        }
        Ok(Shard {
            index: k + 1,
            count,
        })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_exactly_one_shard() {
        let shards: Vec<Shard> = (1..=3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        let mut per = [0; 3];
        for n in 0..300 {
            let name = format!("dueslag-{n}");
            let owners: Vec<usize> = (0..3).filter(|i| shards[*i].owns(&name)).collect();
            assert_eq!(owners.len(), 1);
            per[owners[0]] += 1;
        }
        assert!(per.iter().all(|c| *c > 70), "{per:?}");
        // Stable: the published FNV-1a test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert!(
            "0/3".parse::<Shard>().is_err()
                && "4/3".parse::<Shard>().is_err()
                && "x".parse::<Shard>().is_err()
        );
    }

    /// The on-call defect: during a node drain a Deployment's replacement pod consumed
    /// while the old one was still draining. With `auto/n` in a StatefulSet the shard is
    /// the pod's identity, and Kubernetes never runs two pods of one identity.
    #[test]
    fn auto_takes_the_shard_from_the_pod_ordinal() {
        let auto: ShardArg = "auto/3".parse().unwrap();
        assert_eq!(auto, ShardArg::Auto { count: 3 });
        let shard = |pod: &str| auto.resolve(Some(pod));
        let s = |index, count| Ok(Shard { index, count });
        assert_eq!(shard("bfo-alive-exporter-0"), s(1, 3));
        assert_eq!(shard("bfo-alive-exporter-2"), s(3, 3));
        // Scaled beyond n: no shard, refused with what to fix.
        let err = shard("bfo-alive-exporter-3").unwrap_err();
        assert!(
            err.contains("ordinal 3") && err.contains("replicas"),
            "{err}"
        );
        // Not a StatefulSet pod (a Deployment's pod-template hash, no ordinal).
        assert!(shard("bfo-alive-exporter-7d9f8b6c5-x2x7q").is_err());
        assert!(shard("bfo-alive-exporter").is_err());
        assert!(auto.resolve(None).is_err());
        // Each ordinal of a 3-replica set runs a different shard: together every dueslag once.
        let shards: Vec<Shard> = (0..3).map(|k| shard(&format!("x-{k}")).unwrap()).collect();
        assert!((0..300).all(|n| shards.iter().filter(|s| s.owns(&format!("d{n}"))).count() == 1));
        // A fixed shard ignores the pod name.
        let fixed: ShardArg = "2/3".parse().unwrap();
        assert_eq!(fixed.resolve(None), s(2, 3));
        assert!("auto/0".parse::<ShardArg>().is_err() && "auto".parse::<ShardArg>().is_err());
        assert_eq!(ordinal("web-12"), Some(12));
        assert_eq!(ordinal("web-"), None);
    }
}
