//! The `ferry` binary: see `ferry::cli`.

fn main() -> std::process::ExitCode {
    ferry::cli::main()
}
