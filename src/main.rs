//! The `bfo-alive-exporter` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    bfo_alive_exporter::cli::main()
}
