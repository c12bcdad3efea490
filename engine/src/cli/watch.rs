//! `--watch`: a live progress bar fed by the job's WebSocket feed.

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::client::{CliError, Client};

pub async fn watch(client: &Client, id: &str) -> Result<(), CliError> {
    let job = client.job(id).await?;
    let count = |job: &Value, keys: &[&str]| -> u64 {
        keys.iter()
            .map(|k| job["counts"][*k].as_u64().unwrap_or(0))
            .sum()
    };
    let all = [
        "pending",
        "queued",
        "running",
        "succeeded",
        "failed",
        "needs_review",
        "cancelled",
    ];
    let total = count(&job, &all);
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar.set_position(count(
        &job,
        &["succeeded", "failed", "needs_review", "cancelled"],
    ));
    if matches!(job["status"].as_str(), Some("completed" | "cancelled")) {
        bar.finish_with_message(job["status"].as_str().unwrap_or("").to_owned());
        return Ok(());
    }
    let ws_url = format!("{}/ws/jobs/{id}", client.base().replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .map_err(|e| CliError::Feed(format!("{ws_url}: {e}")))?;
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| CliError::Feed(e.to_string()))?;
        let Message::Text(text) = msg else { continue };
        let Ok(event) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let data = &event["data"];
        match event["type"].as_str() {
            Some("item_progress") => {
                if let Some(done) = data["done"].as_u64() {
                    bar.set_length(data["total"].as_u64().unwrap_or(total));
                    bar.set_position(done);
                    bar.set_message(format!("{} failed", data["failed"].as_u64().unwrap_or(0)));
                }
            }
            Some("item_failed") if !data["will_retry"].as_bool().unwrap_or(false) => {
                bar.println(format!(
                    "item {} failed: {}",
                    event["item_id"].as_str().unwrap_or("?"),
                    data["error"]["message"].as_str().unwrap_or("?")
                ));
            }
            Some("job_completed") => {
                let r = &data["results"];
                bar.finish_with_message(format!(
                    "completed: {} succeeded, {} failed, {} to review",
                    r["succeeded"], r["failed"], r["needs_review"]
                ));
                break;
            }
            Some("job_cancelled") => {
                bar.abandon_with_message("cancelled");
                break;
            }
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}
