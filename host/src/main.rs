//! The `bulkhead` binary; everything lives in the library (`cli`).

fn main() -> std::process::ExitCode {
    bulkhead::cli::main()
}
