//! `faena schedules …`: list, create, pause, resume and delete cron schedules on a
//! running engine.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::client::{CliError, Client};
use crate::schedules::Timing;

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// List the schedules: name, pattern, zone, next run, paused.
    List,
    /// Create a schedule whose runs create a job of `--plugin` with the items of
    /// `--items` (a JSON file, as for `faena jobs submit`) or `--input` values.
    Create {
        /// Five fields: minute hour day-of-month month day-of-week.
        #[arg(long)]
        cron: String,
        /// An IANA time zone, e.g. America/New_York.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        plugin: String,
        #[arg(long, default_value = "run")]
        operation: String,
        #[arg(long, conflicts_with = "input")]
        items: Option<PathBuf>,
        /// One item's input as JSON; repeat for more items.
        #[arg(long)]
        input: Vec<String>,
        /// Runs missed while the engine was down.
        #[arg(long, value_enum, default_value = "skip")]
        missed: Missed,
        /// A run whose previous job is still going.
        #[arg(long, value_enum, default_value = "skip")]
        overlap: Overlap,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// Show one schedule with its next runs.
    Show {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Delete a schedule; the jobs it created stay.
    Delete {
        id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Missed {
    Skip,
    RunOnce,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Overlap {
    Skip,
    Queue,
    Allow,
}

/// Run a `faena schedules …` command, printing to stdout.
pub async fn run_schedules(client: &Client, cmd: SchedulesCommand) -> Result<(), CliError> {
    let path = |id: &str, action: &str| format!("/api/v1/schedules/{id}{action}");
    match cmd {
        SchedulesCommand::List => {
            let list = client.get_json("/api/v1/schedules").await?;
            println!(
                "{:<30}  {:<16}  {:<20}  {:<29}  {:<6}  NAME",
                "ID", "CRON", "TIMEZONE", "NEXT RUN", "PAUSED"
            );
            for s in list["schedules"].as_array().into_iter().flatten() {
                let (cron, zone) = (
                    s["cron"].as_str().unwrap_or(""),
                    s["timezone"].as_str().unwrap_or(""),
                );
                // In the schedule's own zone, as the engine shows its next runs.
                let next = match (s["next_run_at"].as_i64(), Timing::parse(cron, zone)) {
                    (Some(t), Ok(timing)) => timing.format(t),
                    _ => String::new(),
                };
                println!(
                    "{:<30}  {:<16}  {:<20}  {:<29}  {:<6}  {}",
                    s["id"].as_str().unwrap_or(""),
                    cron,
                    zone,
                    next,
                    s["paused"].as_bool().unwrap_or(false),
                    s["name"].as_str().unwrap_or("")
                );
            }
        }
        SchedulesCommand::Create {
            cron,
            timezone,
            name,
            plugin,
            operation,
            items,
            input,
            missed,
            overlap,
            paused,
        } => {
            let items: Vec<Value> = super::client::read_items(items.as_deref(), &input)?;
            let body = json!({
                "cron": cron,
                "timezone": timezone,
                "name": name,
                "paused": paused,
                "missed": match missed { Missed::Skip => "skip", Missed::RunOnce => "run_once" },
                "overlap": match overlap {
                    Overlap::Skip => "skip",
                    Overlap::Queue => "queue",
                    Overlap::Allow => "allow",
                },
                "template": {"plugin": plugin, "operation": operation, "items": items},
            });
            print_schedule(&client.post_json("/api/v1/schedules", &body).await?);
        }
        SchedulesCommand::Show { id } => {
            print_schedule(&client.get_json(&path(&id, "")).await?);
        }
        SchedulesCommand::Pause { id } => {
            print_schedule(&client.post_json(&path(&id, "/pause"), &json!({})).await?);
        }
        SchedulesCommand::Resume { id } => {
            print_schedule(&client.post_json(&path(&id, "/resume"), &json!({})).await?);
        }
        SchedulesCommand::Delete { id } => {
            client.delete_json(&path(&id, "")).await?;
            println!("schedule {id} deleted");
        }
    }
    Ok(())
}

fn print_schedule(s: &Value) {
    let state = if s["paused"].as_bool().unwrap_or(false) {
        "paused"
    } else {
        "active"
    };
    println!(
        "schedule {} `{}` in {} is {}",
        s["id"].as_str().unwrap_or(""),
        s["cron"].as_str().unwrap_or(""),
        s["timezone"].as_str().unwrap_or(""),
        state
    );
    for run in s["next_runs"].as_array().into_iter().flatten() {
        println!("  next: {}", run.as_str().unwrap_or(""));
    }
}
