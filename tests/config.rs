//! Configuration: every invalid fixture fails with its exact error naming the file and
//! the key; every example parses; `--config.check` exits 0 or 2; no secret is printed.

use std::path::Path;
use std::process::Command;

use bfo_alive_exporter::config::Config;

#[test]
fn invalid_fixtures_fail_with_their_error() {
    let mut seen = 0;
    for entry in std::fs::read_dir("tests/testdata").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("invalid-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let want = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# error: "))
            .unwrap_or_else(|| panic!("{name}: first line must be `# error: ...`"));
        let err = Config::load(&path).expect_err(&name).to_string();
        assert!(
            err.starts_with(&path.display().to_string()),
            "{name}: error does not name the file: {err}"
        );
        assert!(err.contains(want), "{name}:\n  want: {want}\n  got:  {err}");
        assert!(!err.contains("hunter2"), "{name}: a secret leaked: {err}");
        seen += 1;
    }
    assert!(seen >= 27, "only {seen} fixtures");
}

#[test]
fn examples_parse() {
    for f in [
        "examples/minimal.toml",
        "examples/full.toml",
        "examples/sim-faults.toml",
        "examples/demo.toml",
        "examples/municipalities.toml",
    ] {
        Config::load(Path::new(f)).unwrap_or_else(|e| panic!("{e}"));
    }
    bfo_alive_exporter::emulator::EmulatorConfig::load(Path::new("examples/emulator.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    // The Kubernetes ConfigMap's file, too.
    let yaml = std::fs::read_to_string("deploy/kubernetes/configmap.yaml").unwrap();
    let toml: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("config.toml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    Config::parse(&toml, "configmap.yaml").unwrap_or_else(|e| panic!("{e}"));
}

fn exporter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bfo-alive-exporter"))
}

#[test]
fn config_check_exit_codes() {
    let ok = exporter()
        .args(["--config.check", "--config.file", "examples/minimal.toml"])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // It says what the environment preset filled in.
    let stdout = String::from_utf8_lossy(&ok.stdout);
    for line in [
        "broker.url = amqps://beskedfordeler.eksterntest-stoettesystemerne.dk:5671/BF (environment = \"eksterntest\")",
        "token.sts_url = https://n2adgangsstyring.eksterntest-stoettesystemerne.dk/runtime (environment = \"eksterntest\"); tokens from POST https://n2adgangsstyring.eksterntest-stoettesystemerne.dk/runtime/api/rest/wstrust/v1/issue",
        "token.afsend_entity_id = http://beskedfordeler.eksterntest-stoettesystemerne.dk/service/afsend/1 (environment = \"eksterntest\")",
        "services: afsend, afhent",
    ] {
        assert!(stdout.contains(line), "{line}\nnot in\n{stdout}");
    }
    let bad = exporter()
        .args([
            "--config.check",
            "--config.file",
            "tests/testdata/invalid-password-masked.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("broker.url") && !stderr.contains("hunter2"),
        "{stderr}"
    );
    let none = exporter().output().unwrap();
    assert_eq!(none.status.code(), Some(2));
}
