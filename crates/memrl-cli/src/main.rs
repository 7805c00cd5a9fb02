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

use clap::{Parser, Subcommand};

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
    /// Add one memory to a bank (created if missing).
    #[command(long_about = cli::bank::ADD_HELP)]
    Add(cli::bank::AddArgs),
    /// Apply a JSON Lines file of outcomes (memory ids, reward) as one atomic batch.
    #[command(long_about = cli::feedback::FEEDBACK_HELP)]
    Feedback(cli::feedback::FeedbackArgs),
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
    let result = match Cli::parse().command {
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
        Command::Inspect(args) => cli::inspect::inspect(&args),
        Command::Calibrate(args) => cli::calibrate::calibrate(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Mcp(args) => serve::mcp(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
