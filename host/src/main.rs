//! The `zdr` binary: parse the command line, set up logging, run the command, print the error
//! chain and choose the exit code. Everything else lives in the library.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = zdr::cli::Cli::parse();
    zdr::cli::init_tracing(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {err}"
            );
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(cli.run());
    // Blocking threads (daemon workers) are told to stop before this point; never wait for
    // ever on one that does not.
    runtime.shutdown_timeout(std::time::Duration::from_secs(30));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stderr must not turn an error into a panic.
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {err}");
            for cause in err.chain().skip(1) {
                let _ = writeln!(stderr, "  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
