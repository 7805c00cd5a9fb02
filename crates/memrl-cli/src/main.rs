//! The `memrl` command-line tool: a thin layer over the library (see `src/cli/`).
//!
//! Output goes to stdout and diagnostics to stderr, so pipes work; errors print their whole
//! context chain on one line and exit non-zero.

mod cli;
// The server's commands live beside the others in `cli/`, declared here so that the command
// modules' index stays as it is.
#[path = "cli/serve.rs"]
mod serve;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cli::demo::{demo, DemoArgs, DEMO_HELP};
use cli::model::{model_list, model_pull, ModelCommand};

#[derive(Parser)]
#[command(
    name = "memrl",
    version,
    about = "Episodic memory with learned utility for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A small learning benchmark (MemRL vs RAG and others on a simulated world), then a snapshot
    /// round trip.
    #[command(long_about = DEMO_HELP)]
    Demo(DemoArgs),
    /// The learning benchmark: policies compared on a simulated world where similarity is not
    /// utility; a table, a JSON file and learning curves.
    #[command(long_about = cli::simulate::SIMULATE_HELP)]
    Simulate(cli::simulate::SimulateArgs),
    /// Benchmark retrieval, learning and snapshots on one device (table and JSON).
    #[command(long_about = cli::bench::BENCH_HELP)]
    Bench(cli::bench::BenchArgs),
    /// The embedding-model registry: list the models, or fetch and verify one.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Embed a field of every line of a JSON Lines file into a safetensors file.
    #[command(long_about = cli::embed::EMBED_HELP)]
    Embed(cli::embed::EmbedArgs),
    /// Create or extend a bank from a JSON Lines file of memories.
    #[command(long_about = cli::bank::INDEX_HELP)]
    Index(cli::bank::IndexArgs),
    /// Add one memory, or a file of them as one logged batch, to a bank (created if missing).
    #[command(long_about = cli::bank::ADD_HELP)]
    Add(cli::bank::AddArgs),
    /// Apply a JSON Lines file of outcomes (memory ids, reward) as one atomic batch.
    #[command(long_about = cli::feedback::FEEDBACK_HELP)]
    Feedback(cli::feedback::FeedbackArgs),
    /// Show or change a bank's stored retrieval and learning configuration.
    #[command(long_about = cli::config::CONFIG_HELP)]
    Config(cli::config::ConfigArgs),
    /// Write every memory (Q, visits, last reward, times, metadata) as JSON Lines.
    #[command(long_about = cli::export::EXPORT_HELP)]
    Export(cli::export::ExportArgs),
    /// A long-running JSON Lines loop on stdin/stdout for an agent: retrieve, feedback, add, ...
    #[command(long_about = cli::pipe::PIPE_HELP)]
    Pipe(cli::pipe::PipeArgs),
    /// Counts, configs and Q telemetry of a bank.
    #[command(long_about = cli::inspect::INSPECT_HELP)]
    Inspect(cli::inspect::InspectArgs),
    /// The paper's delta (top-20% pairwise similarity) and fixed-zsim statistics.
    #[command(long_about = cli::calibrate::CALIBRATE_HELP)]
    Calibrate(cli::calibrate::CalibrateArgs),
    /// Retrieve memories for one query text or a JSON Lines file of queries.
    #[command(long_about = cli::query::QUERY_HELP)]
    Query(cli::query::QueryArgs),
    /// Serve a data directory of namespaces over HTTP (JSON, OpenAI embeddings, metrics, MCP).
    #[command(long_about = serve::SERVE_HELP)]
    Serve(serve::ServeArgs),
    /// Serve the Model Context Protocol over stdio for one agent.
    #[command(long_about = serve::MCP_HELP)]
    Mcp(serve::McpArgs),
    /// Cut a bank's write-ahead log at mid-log damage, saving what is cut (only when asked).
    #[command(long_about = cli::repair::REPAIR_HELP)]
    Repair(cli::repair::RepairArgs),
}

/// Every command, every level down, with negative numbers allowed as values: `--lambda -1`
/// reaches validation (a clear error naming the field) instead of clap reading `-1` as a flag.
fn command() -> clap::Command {
    fn allow_negative(cmd: clap::Command) -> clap::Command {
        cmd.allow_negative_numbers(true)
            .mut_subcommands(allow_negative)
    }
    allow_negative(Cli::command())
}

/// The arguments, parsed with [`command`] (usage errors print and exit 2, as clap does).
fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    // Diagnostics go to stderr, filtered by RUST_LOG (default: warnings only), so stdout stays
    // clean for pipes.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match parse().command {
        Command::Demo(args) => demo(&args),
        Command::Simulate(args) => cli::simulate::run(&args),
        Command::Bench(args) => cli::bench::bench(&args),
        Command::Model(ModelCommand::List) => model_list(),
        Command::Model(ModelCommand::Pull(args)) => model_pull(&args),
        Command::Embed(args) => cli::embed::embed(&args),
        Command::Index(args) => cli::bank::index(&args),
        Command::Add(args) => cli::bank::add(&args),
        Command::Query(args) => cli::query::query(&args),
        Command::Feedback(args) => cli::feedback::feedback(&args),
        Command::Config(args) => cli::config::config(&args),
        Command::Export(args) => cli::export::export(&args),
        Command::Pipe(args) => cli::pipe::pipe(&args),
        Command::Inspect(args) => cli::inspect::inspect(&args),
        Command::Calibrate(args) => cli::calibrate::calibrate(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Mcp(args) => serve::mcp(&args),
        Command::Repair(args) => cli::repair::repair(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error's whole chain of causes on one line, each fact once: a cause whose text the
/// message already ends with (memrl's I/O errors show the OS error they wrap, which is also
/// their source) is not repeated.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn every_flag_of_every_command_takes_a_negative_number_as_its_value() {
        // `--lambda -1` must reach the flag's own parser and then validation (a clear error
        // naming the field), never be read as a flag `-1`. Whatever else fails (a missing
        // argument, a value that is not a path), clap must not have mistaken the number.
        fn walk(cmd: &clap::Command, path: Vec<String>, tried: &mut usize) {
            for arg in cmd.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if !arg.get_action().takes_values() {
                    continue;
                }
                for value in ["-1", "-1.5", "-1e40"] {
                    *tried += 1;
                    let mut argv: Vec<String> = vec!["memrl".into()];
                    argv.extend(path.iter().cloned());
                    argv.push(format!("--{long}"));
                    argv.push(value.into());
                    let err = command()
                        .try_get_matches_from(&argv)
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    assert!(
                        !err.contains("unexpected argument")
                            && !err.contains("a value is required"),
                        "{argv:?}: {err}"
                    );
                }
            }
            for sub in cmd.get_subcommands() {
                let mut path = path.clone();
                path.push(sub.get_name().to_string());
                walk(sub, path, tried);
            }
        }
        let mut tried = 0;
        walk(&command(), Vec::new(), &mut tried);
        assert!(tried > 100, "only {tried} flag values tried");
    }
}
