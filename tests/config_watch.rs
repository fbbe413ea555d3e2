//! `--config.watch-interval`: the exporter reloads when its configuration file's content
//! changes, without SIGHUP. The on-call defect it guards: the Deployment mounted its
//! ConfigMap with `subPath`, which Kubernetes never updates, and nothing told the process
//! to reload anyway. Mounted as a directory, the file is replaced by a symlink swap; the
//! exporter sees the new content and reloads, visible in
//! `bfo_alive_config_last_reload_success_timestamp_seconds`.

mod common;

use std::path::Path;
use std::time::Duration;

use bfo_alive_exporter::server::{self, ConfigSource, Options, Server};
use common::*;

const STAMP: &str = "bfo_alive_config_last_reload_success_timestamp_seconds";
const OK: &str = "bfo_alive_config_last_reload_successful";
const EVERY: Duration = Duration::from_millis(100);

/// A simulator configuration with push dueslag of these names.
fn config(names: &[&str]) -> String {
    let mut c = format!("{IDENTITY}{SIM}[defaults]\ninterval = \"1s\"\n");
    for n in names {
        c.push_str(&push_dueslag(n));
    }
    c
}

async fn start_watching(path: &Path) -> Server {
    server::start(Options {
        source: ConfigSource::File(path.to_path_buf()),
        listen: "127.0.0.1:0".into(),
        shard: None,
        probe_loops: true,
        watch_interval: Some(EVERY),
        web: Default::default(),
    })
    .await
    .expect("server starts")
}

/// Waits until a scrape satisfies `check`, and returns it.
async fn until(s: &Server, what: &str, check: impl Fn(&str) -> bool) -> String {
    wait_for(Duration::from_secs(10), || async {
        let text = scrape(s).await;
        if check(&text) {
            Ok(text)
        } else {
            Err(format!(
                "{what}: {STAMP} = {:?}, {OK} = {:?}",
                value(&text, STAMP),
                value(&text, OK)
            ))
        }
    })
    .await
}

fn has_dueslag(text: &str, name: &str) -> bool {
    text.contains(&format!("dueslag=\"{name}\""))
}

#[tokio::test]
async fn an_edited_config_file_is_reloaded_without_a_signal() {
    let file = ConfigFile::new(&config(&["a"]));
    let s = start_watching(&file.path).await;
    let first = value(&scrape(&s).await, STAMP).expect("loaded at start");

    // The same content written again is no change: no reload. Real time: the watcher runs
    // in the server on the real clock, and "nothing happened" can only be shown by letting
    // several of its checks pass.
    file.write(&config(&["a"]));
    tokio::time::sleep(EVERY * 5).await;
    assert_eq!(value(&scrape(&s).await, STAMP), Some(first));

    file.write(&config(&["a", "b"]));
    let text = until(&s, "reload after the edit", |t| {
        value(t, STAMP).is_some_and(|v| v > first) && has_dueslag(t, "b")
    })
    .await;
    assert_eq!(value(&text, OK), Some(1.0));
    let second = value(&text, STAMP).unwrap();

    // A broken file: the reload fails, the old configuration runs on.
    file.write("[[dueslag]\nthis is not TOML");
    let text = until(&s, "failed reload", |t| value(t, OK) == Some(0.0)).await;
    assert!(has_dueslag(&text, "a") && has_dueslag(&text, "b"));
    assert_eq!(value(&text, STAMP), Some(second));

    // Fixed: reloaded again.
    file.write(&config(&["b"]));
    let text = until(&s, "reload after the fix", |t| {
        value(t, OK) == Some(1.0) && !has_dueslag(t, "a")
    })
    .await;
    assert!(value(&text, STAMP).unwrap() > second);
    s.stop().await;
}

/// How kubelet updates a ConfigMap mounted as a directory: `config.toml` is a symlink to
/// `..data/config.toml`, and `..data` is a symlink that is atomically replaced by one to a
/// new timestamped directory. The file's own path never changes.
#[cfg(unix)]
#[tokio::test]
async fn a_configmap_update_by_symlink_swap_is_reloaded() {
    use std::os::unix::fs::symlink;

    let dir = tempfile::tempdir().unwrap();
    let version = |n: &str, text: &str| {
        let v = dir.path().join(n);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("config.toml"), text).unwrap();
        let tmp = dir.path().join("..data_tmp");
        symlink(n, &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
    };
    version("..2026_12_01_10_00_00.1", &config(&["a"]));
    let path = dir.path().join("config.toml");
    symlink("..data/config.toml", &path).unwrap();

    let s = start_watching(&path).await;
    let first = value(&scrape(&s).await, STAMP).unwrap();
    assert!(has_dueslag(&scrape(&s).await, "a"));

    version("..2026_12_01_10_05_00.2", &config(&["c"]));
    let text = until(&s, "reload after the symlink swap", |t| {
        value(t, STAMP).is_some_and(|v| v > first) && has_dueslag(t, "c")
    })
    .await;
    assert!(!has_dueslag(&text, "a"));
    s.stop().await;
}
