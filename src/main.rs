//! The `ferry` binary: see `ferry::cli`.

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

fn main() -> std::process::ExitCode {
    ferry::cli::main()
}
