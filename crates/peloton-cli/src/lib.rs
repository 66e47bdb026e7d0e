//! The peloton command-line tool as a library: the experiment file's loader and validation, the
//! subcommands, and the command line itself. The `peloton` binary (`src/main.rs`) only parses
//! and reports; the fuzz targets (`fuzz/` at the repository root) call the same code.

mod bench_training;
pub mod command_line;
pub mod config;
pub mod fuzz_entry;
pub mod output;
pub mod report;
mod run_common;
pub mod run_folder;
pub mod sweep;
pub mod topology;
pub mod train;
mod train_mpi;
