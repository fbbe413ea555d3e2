//! The `bfo-alive-bench` binary: the benchmark of BENCHMARKS.md; everything lives in
//! `bfo_alive_exporter::bench`.

fn main() -> std::process::ExitCode {
    bfo_alive_exporter::bench::main()
}
