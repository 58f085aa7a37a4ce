//! Talking to lbd: one HTTP request over its admin socket within `--timeout`; its JSON answer,
//! or lbd's reason as the error.
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use lb_userspace::state::Command;
use serde_json::Value;

use crate::cli::{Cli, Output};

/// How long every admin call may take (set once from `--timeout`).
pub static TIMEOUT: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// One request to the admin socket within `--timeout`; non-2xx answers become errors carrying
/// lbd's reason.
pub async fn call(socket: &PathBuf, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let limit = *TIMEOUT.get_or_init(|| std::time::Duration::from_secs(10));
    tokio::time::timeout(limit, call_once(socket, method, path, body))
        .await
        .map_err(|_| anyhow::anyhow!("lbd did not answer within {limit:?} (--timeout)"))?
}

async fn call_once(socket: &PathBuf, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {} (is lbd running? --socket)", socket.display()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "lbd")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value: Value =
        serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    if !status.is_success() {
        bail!("{}", value.get("error").and_then(Value::as_str).unwrap_or(&value.to_string()));
    }
    Ok(value)
}

pub async fn command(cli: &Cli, command: Command) -> Result<Value> {
    call(&cli.socket, Method::POST, "/commands", Some(serde_json::to_value(command)?)).await
}

/// Asks lbd: with `-o json`, prints its answer as it came and returns None; else its answer
/// as the typed view `T`.
pub async fn ask<T: serde::de::DeserializeOwned>(
    cli: &Cli,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Option<T>> {
    let v = call(&cli.socket, method, path, body).await?;
    if matches!(cli.output, Output::Json) {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(None);
    }
    serde_json::from_value(v).with_context(|| format!("lbd's {path} answer")).map(Some)
}
