//! The gateway's HTTP half: `POST /v1/push` and `POST /v1/pull`, for clients that
//! cannot keep a socket. JSON in and out; a bearer token on every request.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::oneshot;
use warren_core::exec::{Commit, Op};
use warren_core::protocol::{codes, CommitResult, ServerFrame};
use warren_core::subscription::Out;
use warren_core::Value;

use super::{check_client_id, scoped_client_id, stopping, subject, take_http, verify};
use super::{AppError, AppState};
use crate::limits::Budget;
use crate::region::RegionMsg;

fn result_json(seq: u64, r: &CommitResult) -> serde_json::Value {
    match r {
        CommitResult::Committed { position, result } => serde_json::json!({
            "seq": seq, "status": "committed", "position": position, "result": result.to_json()
        }),
        CommitResult::Rejected { code, message } => serde_json::json!({
            "seq": seq, "status": "rejected", "code": code, "message": message
        }),
        CommitResult::Duplicate => serde_json::json!({ "seq": seq, "status": "duplicate" }),
        CommitResult::OutOfOrder { expected } => serde_json::json!({
            "seq": seq, "status": "out_of_order", "expected": expected
        }),
    }
}

/// `POST /v1/push`: `{"client_id": "...", "commits": [{"seq": 1, "function": "f",
/// "args": {...}} | {"seq": 2, "source": "..."}]}` → `{"outcomes": [...]}`.
pub(crate) async fn push(
    State(s): State<AppState>,
    conn: super::ConnExt,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let auth = verify(&s, &headers, &super::conn_of(conn)).await?;
    take_http(&s, &auth, Budget::Frames, 1).await?;
    if body.len() > s.limits.max_frame_bytes {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::FRAME_TOO_LARGE,
            "the request is too large",
        ));
    }
    let bad = |m: &str| AppError::new(StatusCode::BAD_REQUEST, codes::BAD_FRAME, m);
    let req: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
    let client_id = req["client_id"]
        .as_str()
        .ok_or_else(|| bad("client_id is required"))?
        .to_owned();
    check_client_id(&client_id).map_err(|m| bad(&m))?;
    let commits = req["commits"]
        .as_array()
        .ok_or_else(|| bad("commits is required"))?;
    if commits.len() > s.limits.max_commits_per_push {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            codes::TOO_MANY_COMMITS,
            "too many commits in one push",
        ));
    }
    // Check every commit before sending any: a bad request changes nothing.
    let mut parsed = Vec::with_capacity(commits.len());
    for c in commits {
        let seq = c["seq"]
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("each commit needs a seq of 1 or more"))?;
        let op = if let Some(f) = c["function"].as_str() {
            let args = Value::from_json(&c["args"]).map_err(|e| bad(&e.to_string()))?;
            Op::Call {
                function: f.to_owned(),
                args,
            }
        } else if let Some(src) = c["source"].as_str() {
            Op::Run {
                source: src.to_owned(),
            }
        } else {
            return Err(bad("each commit needs a function or a source"));
        };
        let schema_version = c["schema_version"].as_str().unwrap_or("").to_owned();
        parsed.push((seq, op, schema_version));
    }
    take_http(&s, &auth, Budget::Commits, parsed.len() as u64).await?;
    let client_id = scoped_client_id(&auth, &client_id);
    let mut waits = Vec::new();
    for (seq, op, schema_version) in parsed {
        let rx = submit(
            &s,
            Commit {
                client_id: client_id.clone(),
                client_seq: seq,
                schema_version,
                timestamp: 0,
                auth: auth.clone(),
                op,
            },
        )
        .await?;
        waits.push((seq, rx));
    }
    let mut outcomes = Vec::new();
    for (seq, rx) in waits {
        let r = rx.await.map_err(|_| {
            AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::SHUTTING_DOWN,
                "the server stopped before answering",
            )
        })?;
        outcomes.push(result_json(seq, &r));
    }
    Ok(Json(serde_json::json!({ "outcomes": outcomes })).into_response())
}

/// Sends a commit to the sequencer and returns where its outcome will arrive: the wait
/// is registered with the region first, so the outcome cannot pass unseen.
pub(crate) async fn submit(
    s: &AppState,
    commit: Commit,
) -> Result<oneshot::Receiver<CommitResult>, AppError> {
    // Each commit waits for the identity's cost budget (see `limits`).
    let admitted = s
        .identities_for(&commit.auth)
        .admit(&subject(&commit.auth))
        .await
        .map_err(|r| super::http_refused(s, &commit.auth, r))?;
    let (tx, rx) = oneshot::channel();
    s.region
        .send(RegionMsg::Wait {
            client_id: commit.client_id.clone(),
            seq: commit.client_seq,
            reply: tx,
        })
        .map_err(|_| stopping())?;
    s.seq.send(commit).await.map_err(|_| stopping())?;
    admitted.sent();
    Ok(rx)
}

/// `POST /v1/pull`: `{"client_id": "...", "partitions": {"user:ann": 12}}` → the
/// partitions the caller may read and snapshots of those changed since the cursors.
pub(crate) async fn pull(
    State(s): State<AppState>,
    conn: super::ConnExt,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let auth = verify(&s, &headers, &super::conn_of(conn)).await?;
    take_http(&s, &auth, Budget::Frames, 1).await?;
    let sub = subject(&auth);
    let auth_for_id = auth.clone();
    let bad = |m: &str| AppError::new(StatusCode::BAD_REQUEST, codes::BAD_FRAME, m);
    let req: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(&format!("invalid JSON: {e}")))?
    };
    let partitions: Vec<(String, u64)> = req["partitions"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let client_id = scoped_client_id(&auth_for_id, req["client_id"].as_str().unwrap_or(""));
    // What the log held at the server's start is applied first, and a region of many
    // catches up with the global log (as for a welcome).
    s.ready.wait().await.map_err(|m| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::REGION_UNAVAILABLE,
            m,
        )
    })?;
    if let Some(b) = &s.barrier {
        b.wait().await.map_err(|m| {
            AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::REGION_UNAVAILABLE,
                format!("{m}; try another region"),
            )
        })?;
    }
    let (tx, rx) = oneshot::channel();
    s.region
        .send(RegionMsg::View { reply: tx })
        .map_err(|_| stopping())?;
    let view = rx.await.map_err(|_| stopping())?;
    // Computed off the region thread, on the view, like a connection's welcome.
    let _permit = s.catch_ups.acquire(&sub).await.ok_or_else(stopping)?;
    // The snapshots are read whole from the same view: an HTTP answer is one body.
    let (frames, rules) = tokio::task::spawn_blocking(move || {
        let (outs, mut sub) = view.welcome(&client_id, &auth, &partitions, 0)?;
        let frames = outs
            .into_iter()
            .map(|o| match o {
                Out::Frame(f) => Ok(f),
                Out::Snapshot(r) => view.lazy(r).read(),
            })
            .collect::<Result<Vec<ServerFrame>, _>>()?;
        Ok::<_, warren_core::Error>((frames, sub.take_evaluated()))
    })
    .await
    .map_err(|_| stopping())?
    .map_err(AppError::engine)?;
    crate::metrics::Metrics::add(&s.metrics.rules_catch_up, rules);
    let mut out = serde_json::json!({ "snapshots": [] });
    for f in frames {
        match f {
            ServerFrame::Welcome {
                schema_version,
                position,
                partitions,
                ..
            } => {
                out["schema_version"] = schema_version.into();
                out["position"] = position.into();
                out["partitions"] = partitions.into();
            }
            ServerFrame::Snapshot {
                partition,
                position,
                docs,
            } => {
                let docs: Vec<serde_json::Value> = docs
                    .into_iter()
                    .map(|d| serde_json::json!({
                        "collection": d.collection, "id": d.id, "version": d.version, "data": d.data.to_json()
                    }))
                    .collect();
                out["snapshots"]
                    .as_array_mut()
                    .expect("an array")
                    .push(serde_json::json!({ "partition": partition, "position": position, "docs": docs }));
            }
            _ => {}
        }
    }
    Ok(Json(out).into_response())
}
