//! The `faena` command line: `serve`, `worker`, `plugin run` (one item here, no
//! server), and `jobs …`, `schedules …`, `webhooks …`, `keys …` and `plugin install`,
//! which talk to a running engine over its REST API and WebSocket feed.

pub mod client;
mod plugin;
mod scaffold;
mod schedules;
mod watch;
mod webhooks;

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use client::{CliError, Client};
pub use plugin::{PluginCommand, run_plugin};
pub use schedules::{SchedulesCommand, run_schedules};
pub use webhooks::{WebhooksCommand, run_webhooks};

#[derive(Debug, Parser)]
#[command(
    name = "faena",
    version,
    about = "Durable jobs for business web portals"
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "FAENA_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine: API, feed, dispatcher and plugins.
    Serve(ServeArgs),
    /// Run plugins for an engine elsewhere: claims its items over HTTP(S), runs them
    /// here (with this machine's Chromium) and reports back.
    Worker(WorkerArgs),
    /// Work with jobs on a running engine.
    Jobs {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Cron schedules that create jobs, on a running engine.
    Schedules {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: SchedulesCommand,
    },
    /// Manage API keys on a running engine (needs an admin key).
    Keys {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Write plugins: run one item of a plugin here with no server, or install it on
    /// a running engine.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Manage the tenant's webhooks on a running engine (changes need an admin key).
    Webhooks {
        #[command(flatten)]
        remote: Remote,
        #[command(subcommand)]
        command: WebhooksCommand,
    },
}

/// Where the engine is and the key to call it with.
#[derive(Debug, Args)]
pub struct Remote {
    /// The engine's address.
    #[arg(
        long,
        global = true,
        env = "FAENA_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// The API key. Default: the admin key the engine wrote to
    /// `$FAENA_DATA_DIR/admin.key` (`./data/admin.key`), if it is readable here.
    #[arg(long, global = true, env = "FAENA_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

impl Remote {
    pub fn client(&self) -> Client {
        let key = self.key.clone().or_else(|| {
            let dir = std::env::var_os("FAENA_DATA_DIR").unwrap_or_else(|| "./data".into());
            std::fs::read_to_string(PathBuf::from(dir).join("admin.key"))
                .ok()
                .map(|k| k.trim().to_owned())
        });
        Client::new(&self.server, key)
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its token (shown once).
    Create {
        /// What the key is for.
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Another tenant than the caller's (needs an admin key of `default`).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List keys (never their tokens).
    List,
    /// Revoke a key by its id.
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// For `faena worker`: claims and reports items, fetches plugins; reads nothing else.
    Worker,
    Viewer,
    Operator,
    Admin,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The engine's address.
    #[arg(long, env = "FAENA_URL")]
    pub server: String,
    /// An API key with the `worker` role (`faena keys create --role worker`).
    #[arg(long, env = "FAENA_API_KEY", hide_env_values = true)]
    pub key: String,
    /// This worker's name: its leases and the attempts it runs carry it (default: the
    /// host name).
    #[arg(long, env = "FAENA_WORKER_NAME")]
    pub name: Option<String>,
    /// Labels, comma-separated: jobs with `labels` in their options run only on
    /// workers that carry all of them (e.g. `pe` for the network it answers from).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Plugins to run, comma-separated (default: every plugin the engine has).
    #[arg(long, value_delimiter = ',')]
    pub plugins: Vec<String>,
    /// Items run at once.
    #[arg(long, env = "FAENA_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Chromium to launch for browser plugins (default /usr/bin/chromium).
    #[arg(long, env = "FAENA_CHROMIUM")]
    pub chromium: Option<PathBuf>,
    /// Use browsers already running at these CDP URLs instead of launching one
    /// (repeat it, or separate with commas, for a fleet: contexts go to the one with
    /// the most free capacity, and one that cannot be reached is skipped for a while).
    #[arg(
        long,
        env = "FAENA_CDP_URL",
        value_delimiter = ',',
        conflicts_with = "chromium"
    )]
    pub cdp_url: Vec<String>,
    /// Contexts each `--cdp-url` browser holds at once (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub cdp_capacity: usize,
    /// Run without a browser (browser plugins fail their items).
    #[arg(long)]
    pub no_browser: bool,
    /// Compiled plugins and Chromium profiles (never secrets).
    #[arg(long, env = "FAENA_DATA_DIR", default_value = "./worker-data")]
    pub data_dir: PathBuf,
    /// At a stop, running items get this many seconds to finish.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
}

impl WorkerArgs {
    pub fn options(self) -> crate::worker::WorkerOptions {
        let name = self.name.unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".into())
        });
        crate::worker::WorkerOptions {
            server: self.server,
            key: self.key,
            name,
            labels: self.labels,
            plugins: self.plugins,
            concurrency: self.concurrency,
            chromium: self.chromium,
            endpoints: self
                .cdp_url
                .into_iter()
                .map(|url| crate::runtime::browser::Endpoint {
                    url,
                    capacity: self.cdp_capacity,
                })
                .collect(),
            no_browser: self.no_browser,
            data_dir: self.data_dir,
            grace: std::time::Duration::from_secs(self.grace_secs),
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where jobs, items and events are stored.
    #[arg(long, env = "FAENA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1).
    #[arg(long, env = "FAENA_BIND")]
    pub bind: Option<IpAddr>,
    /// Port to listen on (default 8080).
    #[arg(long, env = "FAENA_PORT")]
    pub port: Option<u16>,
    /// Items run at once (default 4).
    #[arg(long, env = "FAENA_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// A TOML file with the same settings, per-plugin grants and secrets.
    #[arg(long, env = "FAENA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Chromium to launch for browser plugins (default /usr/bin/chromium).
    #[arg(long, env = "FAENA_CHROMIUM")]
    pub chromium: Option<PathBuf>,
    /// Use a browser already running at this CDP URL instead of launching one.
    #[arg(long, env = "FAENA_CDP_URL")]
    pub cdp_url: Option<String>,
    /// Run without a browser (browser plugins fail their items).
    #[arg(long)]
    pub no_browser: bool,
}

#[derive(Debug, Args)]
pub struct JobOptionArgs {
    /// Operation of the plugin to run.
    #[arg(long, default_value = "run")]
    pub operation: String,
    /// A name for the job.
    #[arg(long)]
    pub name: Option<String>,
    /// Attempts per item.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Send failed items to review instead of failing them.
    #[arg(long)]
    pub review: bool,
    /// Higher runs first.
    #[arg(long)]
    pub priority: Option<i32>,
    /// Items of this job running at once.
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Create the job paused in `pending`; start it with `faena jobs start`.
    #[arg(long)]
    pub no_start: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Create a job from a JSON file of items (`[{"input": {...}, "reference": "..."}]`
    /// or plain inputs), or from `--input` values.
    Submit {
        #[arg(long)]
        plugin: String,
        /// A JSON file: an array of items or of inputs. `-` reads standard input.
        #[arg(long, conflicts_with = "input")]
        items: Option<PathBuf>,
        /// One item's input as JSON; repeat for more items.
        #[arg(long)]
        input: Vec<String>,
        #[command(flatten)]
        options: JobOptionArgs,
        /// Follow the job's progress until it finishes.
        #[arg(long)]
        watch: bool,
    },
    /// Create a job from a CSV or XLSX spreadsheet, one item per row or per group of
    /// rows (the plugin's default grouping unless --group-by says otherwise).
    Import {
        file: PathBuf,
        #[arg(long)]
        plugin: String,
        /// Rows with the same value in this column become one item.
        #[arg(long)]
        group_by: Option<String>,
        /// Rename a column of the file: `--map Codigo=product_code` (repeatable).
        #[arg(long = "map", value_name = "FILE_COLUMN=FIELD")]
        mapping: Vec<String>,
        #[command(flatten)]
        options: JobOptionArgs,
        #[arg(long)]
        watch: bool,
    },
    /// List jobs, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        plugin: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show a job; with --watch, a live progress bar until it finishes.
    Status {
        id: String,
        #[arg(long)]
        watch: bool,
    },
    /// Queue the items of a job created with --no-start.
    Start {
        id: String,
    },
    /// Send the failed items of a job back to the queue.
    Retry {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Cancel {
        id: String,
    },
    /// Delete a completed or cancelled job (cancel it first) with its items and logs;
    /// its events stay in the log.
    Delete {
        id: String,
    },
}

/// Run a `faena keys …` command, printing to stdout.
pub async fn run_keys(client: &Client, cmd: KeysCommand) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Create { name, role, tenant } => {
            let role = match role {
                RoleArg::Worker => "worker",
                RoleArg::Viewer => "viewer",
                RoleArg::Operator => "operator",
                RoleArg::Admin => "admin",
            };
            let created = client.create_key(&name, role, tenant.as_deref()).await?;
            let key = &created["key"];
            eprintln!(
                "key {} ({}, tenant {}): keep the token, it is not shown again",
                key["id"].as_str().unwrap_or(""),
                key["role"].as_str().unwrap_or(""),
                key["tenant"].as_str().unwrap_or("")
            );
            println!("{}", created["token"].as_str().unwrap_or(""));
        }
        KeysCommand::List => {
            let list = client.keys().await?;
            println!("{:<14}  {:<16}  {:<8}  NAME", "ID", "TENANT", "ROLE");
            for k in list["keys"].as_array().into_iter().flatten() {
                println!(
                    "{:<14}  {:<16}  {:<8}  {}",
                    k["id"].as_str().unwrap_or(""),
                    k["tenant"].as_str().unwrap_or(""),
                    k["role"].as_str().unwrap_or(""),
                    k["name"].as_str().unwrap_or("")
                );
            }
        }
        KeysCommand::Revoke { id } => {
            client.revoke_key(&id).await?;
            println!("key {id} revoked");
        }
    }
    Ok(())
}

/// Run a `faena jobs …` command, printing to stdout.
pub async fn run_jobs(client: &Client, cmd: JobsCommand) -> Result<(), CliError> {
    match cmd {
        JobsCommand::Submit {
            plugin,
            items,
            input,
            options,
            watch,
        } => {
            let items = client::read_items(items.as_deref(), &input)?;
            let job = client.submit(&plugin, items, &options).await?;
            print_job(&job);
            if watch {
                watch::watch(client, &job.id).await?;
            }
        }
        JobsCommand::Import {
            file,
            plugin,
            group_by,
            mapping,
            options,
            watch,
        } => {
            let mut renames = serde_json::Map::new();
            for m in &mapping {
                let Some((from, to)) = m
                    .split_once('=')
                    .filter(|(f, t)| !f.is_empty() && !t.is_empty())
                else {
                    return Err(CliError::Input(format!(
                        "--map `{m}`: expected FILE_COLUMN=FIELD"
                    )));
                };
                renames.insert(from.to_owned(), to.into());
            }
            let job = client
                .import(&file, &plugin, group_by.as_deref(), &renames, &options)
                .await?;
            print_job(&job);
            if watch {
                watch::watch(client, &job.id).await?;
            }
        }
        JobsCommand::List {
            status,
            plugin,
            limit,
        } => {
            let jobs = client
                .list(status.as_deref(), plugin.as_deref(), limit)
                .await?;
            println!(
                "{:<26}  {:<15}  {:<12}  {:>7}  {:>7}  {:>7}  NAME",
                "ID", "STATUS", "PLUGIN", "DONE", "FAILED", "TOTAL"
            );
            for job in jobs {
                let c = &job.counts;
                println!(
                    "{:<26}  {:<15}  {:<12}  {:>7}  {:>7}  {:>7}  {}",
                    job.id,
                    if job.awaiting_review {
                        "awaiting review".to_owned()
                    } else {
                        job.status.to_string()
                    },
                    job.plugin,
                    c.succeeded,
                    c.failed + c.needs_review,
                    c.total(),
                    job.name.as_deref().unwrap_or(""),
                );
            }
        }
        JobsCommand::Status { id, watch } => {
            if watch {
                watch::watch(client, &id).await?;
            } else {
                print_job(&client.job(&id).await?);
            }
        }
        JobsCommand::Start { id } => print_job(&client.action(&id, "start").await?),
        JobsCommand::Retry { id } => print_job(&client.action(&id, "retry").await?),
        JobsCommand::Pause { id } => print_job(&client.action(&id, "pause").await?),
        JobsCommand::Resume { id } => print_job(&client.action(&id, "resume").await?),
        JobsCommand::Cancel { id } => print_job(&client.action(&id, "cancel").await?),
        JobsCommand::Delete { id } => {
            let job = client.delete(&id).await?;
            println!("deleted job {} ({} items)", job.id, job.counts.total());
        }
    }
    Ok(())
}

fn print_job(job: &crate::model::Job) {
    let waiting = if job.awaiting_review {
        ", awaiting review"
    } else {
        ""
    };
    println!("job {} ({}) is {}{waiting}", job.id, job.plugin, job.status);
    let counts = serde_json::to_value(&job.counts).unwrap_or_default();
    let parts: Vec<String> = counts
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!("  {}", parts.join(", "));
}
