//! Standard output that never panics. `println!` panics when a write fails (a full disk, a
//! closed file); every line of the CLI goes through [`outln!`] instead, which keeps the
//! first error and stops writing, and `main` turns that error into its one `error:` line and
//! exit code 1 once the command is done (the run folder, the command's real output, is
//! complete by then). A reader that closed the pipe (`peloton list | head -1`) is not an
//! error: output just stops, as for any Unix tool.

use std::io::Write;
use std::sync::OnceLock;

/// The first failed write to standard output (not a closed pipe).
static FAILED: OnceLock<std::io::Error> = OnceLock::new();
/// Set once the reader closed the pipe: nothing more is written.
static CLOSED: OnceLock<()> = OnceLock::new();

/// Where the lines go instead of standard output, when set ([`set_sink`]).
type Sink = Box<dyn Fn(&str) + Send + Sync>;
static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends every line written with [`outln!`] to `sink` (without its newline) instead of the
/// process's standard output: the Python package hands them to `sys.stdout`, which a notebook
/// shows and the file descriptor does not reach. Once per process; returns whether it took.
pub fn set_sink(sink: impl Fn(&str) + Send + Sync + 'static) -> bool {
    SINK.set(Box::new(sink)).is_ok()
}

/// Writes one line to standard output; a failure is kept for [`failure`].
pub fn write_line(args: std::fmt::Arguments<'_>) {
    if let Some(sink) = SINK.get() {
        sink(&args.to_string());
        return;
    }
    if FAILED.get().is_some() || CLOSED.get().is_some() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            let _ = CLOSED.set(());
        }
        Err(e) => {
            let _ = FAILED.set(e);
        }
    }
}

/// The first error writing to standard output, if any.
pub fn failure() -> Option<&'static std::io::Error> {
    FAILED.get()
}

/// `println!` that never panics (see the module docs).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

/// Writes one line to standard error in a single write (MPI ranks share stderr, and a line
/// written in pieces interleaves with other ranks' lines). A failure is ignored on purpose:
/// standard error is where failures are reported, so there is nowhere left to report one, and
/// the exit code still says how the command ended. `eprintln!` would panic instead.
pub fn write_error_line(args: std::fmt::Arguments<'_>) {
    let line = format!("{args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `eprintln!` that never panics (see [`write_error_line`]).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::write_error_line(format_args!($($arg)*))
    };
}

/// Prints `e` as the run's one error line: the error and its causes, outermost first, in a
/// single write (MPI ranks share stderr, and a line written in pieces interleaves with other
/// ranks' lines).
pub fn print_error(e: &anyhow::Error) {
    crate::errln!("{}", error_line(e));
}

/// The error line of `e`: `error: ` and the error with its causes. Messages quote what the
/// user gave, which may hold line breaks (`--model $'len\n'`); they are escaped, so that the
/// error is always one line.
pub fn error_line(e: &anyhow::Error) -> String {
    format!("error: {e:#}")
        .trim_end()
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// An error whose line was already printed (an MPI rank prints before MPI finalizes).
#[derive(Debug)]
pub struct AlreadyReported;

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the error was reported above")
    }
}

impl std::error::Error for AlreadyReported {}
