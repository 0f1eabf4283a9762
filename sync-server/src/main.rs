//! `warren`: Warren's sync server and its tools.
//!
//! Today it checks schemas (`warren check schema.warren`); the server itself (`serve`)
//! and development tokens (`token`) arrive with the sync protocol.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warren_core::Schema;

#[derive(Parser)]
#[command(name = "warren", version, about = "Warren's sync server and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a schema file: parse it, compile it, and print its version.
    Check {
        /// The schema file.
        #[arg(env = "WARREN_SCHEMA", default_value = "schema.warren")]
        schema: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { schema, json } => check(&schema, json),
    }
}

fn check(path: &PathBuf, json: bool) -> ExitCode {
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    match Schema::parse(&source) {
        Ok(s) => {
            if json {
                let summary = serde_json::json!({
                    "ok": true,
                    "version": s.version(),
                    "collections": s.collections.values().map(|c| serde_json::json!({
                        "name": c.name,
                        "indexes": c.indexes.keys().collect::<Vec<_>>(),
                        "rules": c.rules.keys().map(|a| a.as_str()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "functions": s.functions.keys().collect::<Vec<_>>(),
                });
                println!("{summary}");
            } else {
                println!("{}: ok, version {}", path.display(), s.version());
                for c in s.collections.values() {
                    let rules: Vec<&str> = c.rules.keys().map(|a| a.as_str()).collect();
                    println!(
                        "  collection {} (indexes: {}; allow: {})",
                        c.name,
                        join(c.indexes.keys().map(String::as_str)),
                        if rules.is_empty() {
                            "nothing".to_owned()
                        } else {
                            rules.join(", ")
                        }
                    );
                }
                for (name, f) in &s.functions {
                    println!("  function {name}({})", f.params.join(", "));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let at = e
                .pos
                .map(|p| format!(":{}:{}", p.line, p.col))
                .unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": false,
                        "code": e.code.as_str(),
                        "message": e.message,
                        "line": e.pos.map(|p| p.line),
                        "column": e.pos.map(|p| p.col),
                    })
                );
            } else {
                eprintln!("{}{at}: {}: {}", path.display(), e.code, e.message);
            }
            ExitCode::from(1)
        }
    }
}

fn join<'a>(xs: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = xs.collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}
