//! `peloton`: distributed training from the command line. Everything but the process's entry
//! lives in the library (`peloton_cli::command_line`), where the command-line fuzz target
//! reaches it too, and where a user crate's binary with algorithms of its own starts the same
//! CLI (see examples/decaying_gossip_algorithm.rs).

fn main() -> std::process::ExitCode {
    peloton_cli::command_line::main()
}
