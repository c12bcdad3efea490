//! `--watch`: a live progress bar fed by the job's WebSocket feed.

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::client::{CliError, Client};
use crate::model::JobStatus;

pub async fn watch(client: &Client, id: &str) -> Result<(), CliError> {
    let job = client.job(id).await?;
    let bar = ProgressBar::new(job.counts.total());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar.set_position(job.counts.done());
    if matches!(job.status, JobStatus::Completed | JobStatus::Cancelled) {
        finish(&bar, job.status.to_string());
        return Ok(());
    }
    let total = job.counts.total();
    let ws_url = format!("{}/ws/jobs/{id}", client.base().replacen("http", "ws", 1));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            ws_url.as_str(),
        )
        .map_err(|e| CliError::Feed(format!("{ws_url}: {e}")))?;
    if let Some(v) = client
        .key()
        .and_then(|k| format!("Bearer {k}").parse().ok())
    {
        request.headers_mut().insert("authorization", v);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
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
                let msg = format!(
                    "completed: {} succeeded, {} failed, {} to review",
                    r["succeeded"], r["failed"], r["needs_review"]
                );
                finish(&bar, msg);
                break;
            }
            Some("job_awaiting_review") => {
                // Nothing moves until an operator resolves them: stop watching.
                finish(
                    &bar,
                    format!(
                        "awaiting review: {} item(s) need an operator",
                        data["needs_review"]
                    ),
                );
                break;
            }
            Some("job_cancelled") => {
                finish(&bar, "cancelled".to_owned());
                break;
            }
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// End the bar; without a terminal (the bar is hidden) print the outcome instead.
fn finish(bar: &ProgressBar, msg: String) {
    if bar.is_hidden() {
        println!("{msg}");
    }
    bar.finish_with_message(msg);
}
