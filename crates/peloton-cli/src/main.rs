//! `peloton`: distributed training from the command line. Everything but the process's entry
//! lives in the library (`peloton_cli::command_line`), where the command-line fuzz target
//! reaches it too.

use std::process::ExitCode;

use clap::Parser;
use peloton_cli::command_line::{print_error, run, usage_error, AlreadyReported, Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let result = run(cli);
    // A failed write to standard output is the command's error when nothing else failed.
    let result = match (result, peloton_cli::output::failure()) {
        (Ok(()), Some(e)) => Err(anyhow::anyhow!("cannot write to standard output: {e}")),
        (result, _) => result,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<AlreadyReported>().is_none() {
                print_error(&e);
            }
            ExitCode::FAILURE
        }
    }
}
