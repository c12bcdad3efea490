//! `faena webhooks …`: a tenant's webhook subscriptions on a running engine (changing
//! them needs an admin key).

use clap::Subcommand;

use super::{CliError, Client};

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Subscribe a URL to the tenant's events and print its secret (shown once).
    Create {
        /// Where events are POSTed (`https://…` or `http://…`).
        url: String,
        /// Only events of these types (repeat it); none: every event.
        #[arg(long = "type")]
        types: Vec<String>,
        /// The signing secret (`whsec_…`); left out: one is generated.
        #[arg(long)]
        secret: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List the tenant's subscriptions (never their secrets).
    List,
    /// Delete a subscription.
    Delete { id: String },
    /// Turn a subscription back on after failures turned it off.
    Enable { id: String },
    /// A subscription's recent deliveries, newest first.
    Deliveries { id: String },
}

/// Run a `faena webhooks …` command, printing to stdout.
pub async fn run_webhooks(client: &Client, cmd: WebhooksCommand) -> Result<(), CliError> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    match cmd {
        WebhooksCommand::Create {
            url,
            types,
            secret,
            description,
        } => {
            let body = serde_json::json!({"url": url, "types": types, "secret": secret,
                                          "description": description});
            let created = client.call("POST", "/api/v1/webhooks", Some(body)).await?;
            eprintln!(
                "webhook {}: keep the secret, it is not shown again",
                s(&created["webhook"]["id"])
            );
            println!("{}", s(&created["secret"]));
        }
        WebhooksCommand::List => {
            let list = client.call("GET", "/api/v1/webhooks", None).await?;
            println!("{:<30}  {:<8}  {:<8}  URL", "ID", "ENABLED", "FAILURES");
            for w in list["webhooks"].as_array().into_iter().flatten() {
                println!(
                    "{:<30}  {:<8}  {:<8}  {}",
                    s(&w["id"]),
                    w["enabled"].to_string(),
                    w["failures"].to_string(),
                    s(&w["url"])
                );
            }
        }
        WebhooksCommand::Delete { id } => {
            client
                .call("DELETE", &format!("/api/v1/webhooks/{id}"), None)
                .await?;
            println!("webhook {id} deleted");
        }
        WebhooksCommand::Enable { id } => {
            client
                .call("POST", &format!("/api/v1/webhooks/{id}/enable"), None)
                .await?;
            println!("webhook {id} enabled");
        }
        WebhooksCommand::Deliveries { id } => {
            let list = client
                .call("GET", &format!("/api/v1/webhooks/{id}/deliveries"), None)
                .await?;
            println!(
                "{:<14}  {:<10}  {:<8}  {:<6}  LAST ERROR",
                "ID", "STATE", "ATTEMPTS", "STATUS"
            );
            for d in list["deliveries"].as_array().into_iter().flatten() {
                println!(
                    "{:<14}  {:<10}  {:<8}  {:<6}  {}",
                    s(&d["webhook_id"]),
                    s(&d["state"]),
                    d["attempts"].to_string(),
                    d["status_code"]
                        .as_u64()
                        .map_or("-".into(), |c| c.to_string()),
                    s(&d["last_error"])
                );
            }
        }
    }
    Ok(())
}
