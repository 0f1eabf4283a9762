//! The operator's endpoints, behind a bearer token of their own (`--admin-token`; off
//! without one): where the region stands, and its state as a snapshot stream that a
//! new region boots from (`docs/REGIONS.md`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::{mpsc, oneshot};

use super::{stopping, AppError, AppState};
use crate::region::RegionMsg;

/// What the operator's endpoints need.
#[derive(Clone)]
pub struct Admin {
    /// The bearer token they require.
    pub token: String,
    /// The region's name (empty in the embedded mode).
    pub region: String,
    /// The region's latest batch end (a region of many).
    pub latest: Option<Arc<std::sync::Mutex<crate::region::BatchEnd>>>,
}

/// Checks the admin token (in constant time).
fn admin_of(s: &AppState, headers: &HeaderMap) -> Result<Admin, AppError> {
    let Some(admin) = &s.admin else {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "the admin endpoints are off: start the server with --admin-token",
        ));
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .as_bytes();
    let want = admin.token.as_bytes();
    let mut diff = given.len() ^ want.len();
    for (i, w) in want.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ w);
    }
    if diff != 0 {
        return Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            "ADMIN_TOKEN",
            "a wrong or missing admin token",
        ));
    }
    Ok(admin.clone())
}

/// `GET /v1/admin/state`: where the region stands.
pub(crate) async fn state(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let admin = admin_of(&s, &headers)?;
    let mut body = s.metrics.region.summary();
    body["position"] = s.metrics.position.load(Ordering::Relaxed).into();
    body["connections"] = s.metrics.connections.load(Ordering::Relaxed).into();
    // The digest and position of the state the region serves now (the log head it has
    // applied), from a consistent view.
    let (tx, rx) = oneshot::channel();
    if s.region.send(RegionMsg::View { reply: tx }).is_ok() {
        if let Ok(view) = rx.await {
            let applied = tokio::task::spawn_blocking(move || {
                warren_core::exec::digest(&view.state()).map(|d| (view.position, d))
            })
            .await;
            if let Ok(Ok((position, digest))) = applied {
                body["applied_position"] = position.into();
                body["digest"] = warren_core::hex(&digest).into();
            }
        }
    }
    if let Some(latest) = &admin.latest {
        let l = *latest.lock().expect("latest lock");
        body["batch_end"] = serde_json::json!({
            "revision": l.revision, "position": l.position, "digest": warren_core::hex(&l.digest)
        });
    }
    Ok(Json(body).into_response())
}

/// `GET /v1/admin/snapshot`: the region's state at its last applied batch end, as the
/// snapshot stream, for a new region to boot from.
pub(crate) async fn snapshot(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let admin = admin_of(&s, &headers)?;
    let (tx, rx) = oneshot::channel();
    s.region
        .send(RegionMsg::Snapshot(tx))
        .map_err(|_| stopping())?;
    let source = rx
        .await
        .map_err(|_| stopping())?
        .map_err(AppError::engine)?;
    tracing::info!(
        position = source.position,
        revision = source.revision,
        "streaming a snapshot"
    );
    let (chunks_tx, chunks_rx) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let r = crate::snapshot::write(source, &admin.region, 256 * 1024, |chunk| {
            chunks_tx.blocking_send(Ok(chunk)).is_ok()
        });
        if let Err(e) = r {
            let _ = chunks_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(chunks_rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    });
    Ok((
        [("content-type", "application/octet-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// `POST /v1/admin/explain`: a program or a partition's read rule run as an identity on
/// a consistent view of the region, with the trace of the rules it evaluated
/// ([`crate::explain`]; the body is a [`crate::explain::Request`] in JSON). Nothing is
/// written. The answer is the trace's serialized form (docs/DEBUGGING.md).
pub(crate) async fn explain(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    admin_of(&s, &headers)?;
    let bad = |m: String| AppError::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", m);
    let j: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let req = crate::explain::Request::from_json(&j)
        .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, e.code.as_str(), e.message))?;
    let (tx, rx) = oneshot::channel();
    s.region
        .send(RegionMsg::View { reply: tx })
        .map_err(|_| stopping())?;
    let view = rx.await.map_err(|_| stopping())?;
    let x = tokio::task::spawn_blocking(move || {
        let state = view.state();
        crate::explain::run(&state, view.schema(), view.limits(), view.position, &req)
    })
    .await
    .map_err(|_| stopping())?
    .map_err(AppError::engine)?;
    Ok(([("content-type", "application/json")], x.to_json()).into_response())
}
