//! The cloud's side of firmware updates (MQTT): bundles and update requests the uplink received,
//! and the results the actor publishes (`ferry/v1/{gateway}/firmware/{bundle,update}/result`).
//! Part of the actor (same state), kept apart: the contract's payloads live here only.

use ferry_contract::{self as contract, FirmwareTopic};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::bundle::Bundle;
use super::{rollout, Actor, BundleInfo, OutgoingMessage, RolloutSpec, RolloutView};
use crate::commands::Completion;

impl Actor {
    /// Queues a message for the cloud (dropped when no uplink is configured).
    fn publish(&self, topic: String, payload: Vec<u8>, delivered: Option<oneshot::Sender<()>>) {
        let m = OutgoingMessage {
            topic,
            payload,
            events: 0,
            delivered,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.results.try_send(m) {
            tracing::warn!(
                "Firmware result queue full; a stored final result goes out after the next start."
            );
        }
    }

    pub(super) async fn mqtt_bundle(&mut self, payload: &[u8], completion: Completion) {
        let gateway = self.gateway.clone();
        let result = |status, b: Option<&BundleInfo>, detail| contract::BundleResult {
            v: contract::SCHEMA_VERSION,
            gateway: gateway.clone(),
            status,
            sha256: b.map(|b| b.sha256.clone()),
            version: b.map(|b| b.version.clone()),
            board: b.map(|b| b.board.clone()),
            detail,
            at_ms: crate::utc_now_ms(),
        };
        let topic = contract::firmware_result_topic(&self.gateway, FirmwareTopic::Bundle);
        let stored = match Bundle::parse(payload) {
            Ok(b) => self.add_bundle(b).await,
            Err(e) => Err(e),
        };
        match stored {
            Ok((info, _)) => {
                completion.done();
                let r = result(contract::BundleStatus::Stored, Some(&info), None);
                self.publish(topic, serde_json::to_vec(&r).expect("serializes"), None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Firmware bundle from MQTT rejected.");
                let r = result(contract::BundleStatus::Rejected, None, Some(e));
                self.answer_then_ack(topic, &r, completion);
            }
        }
    }

    /// Publishes `r` and acks the request once the broker has the answer (a crash in between
    /// redelivers the request, which is answered again).
    fn answer_then_ack<T: Serialize>(&self, topic: String, r: &T, completion: Completion) {
        let (tx, rx) = oneshot::channel();
        self.publish(topic, serde_json::to_vec(r).expect("serializes"), Some(tx));
        tokio::spawn(async move {
            if rx.await.is_ok() {
                completion.done();
            }
        });
    }

    pub(super) async fn mqtt_update(&mut self, payload: &[u8], completion: Completion) {
        let topic = contract::firmware_result_topic(&self.gateway, FirmwareTopic::Update);
        let gateway = self.gateway.clone();
        let reject = |id: String, detail: String| contract::UpdateResult {
            v: contract::SCHEMA_VERSION,
            id,
            gateway: gateway.clone(),
            update: None,
            status: contract::UpdateResultStatus::Rejected,
            detail: Some(detail),
            jobs: Vec::new(),
            at_ms: crate::utc_now_ms(),
        };
        let req = match contract::UpdateRequest::decode(payload) {
            Ok(r) => r,
            Err(e) => {
                let id = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v.get("id")?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                tracing::warn!(request = %id, error = %e, "Firmware update request rejected.");
                let r = reject(id, e.to_string());
                self.answer_then_ack(topic, &r, completion);
                return;
            }
        };
        // A repeated request: answer with where that update stands.
        let known: Option<i64> = self
            .reader
            .query_row(
                "SELECT id FROM firmware_rollouts WHERE request_id = ?1",
                params![req.id],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or(None);
        if let Some(rid) = known {
            if let Some(v) = self.list(Some(rid)).ok().and_then(|mut v| v.pop()) {
                let r = self.result_of(&v, req.id.clone());
                self.publish(topic, serde_json::to_vec(&r).expect("serializes"), None);
            }
            completion.done();
            return;
        }
        let spec = RolloutSpec {
            devices: req.devices.clone(),
            bundle: req.bundle.clone(),
            force: req.force,
            concurrency: req.concurrency.unwrap_or(rollout::DEFAULT_CONCURRENCY),
            max_failures: req.max_failures.unwrap_or(0),
        };
        match self.start_with(spec, Some(req.id.clone())).await {
            Ok(v) => {
                completion.done();
                let r = self.result_of(&v, req.id);
                self.publish(topic, serde_json::to_vec(&r).expect("serializes"), None);
            }
            Err(e) => {
                tracing::warn!(request = %req.id, error = %e, "Firmware update request rejected.");
                let r = reject(req.id, e);
                self.answer_then_ack(topic, &r, completion);
            }
        }
    }

    /// The result message of an update as it stands.
    fn result_of(&self, v: &RolloutView, id: String) -> contract::UpdateResult {
        contract::UpdateResult {
            v: contract::SCHEMA_VERSION,
            id,
            gateway: self.gateway.clone(),
            update: Some(v.id),
            status: match v.state.as_str() {
                "done" => contract::UpdateResultStatus::Done,
                "stopped" => contract::UpdateResultStatus::Stopped,
                "cancelled" => contract::UpdateResultStatus::Cancelled,
                _ => contract::UpdateResultStatus::Accepted,
            },
            detail: None,
            jobs: v
                .jobs
                .iter()
                .map(|j| contract::JobResult {
                    device: j.device.clone(),
                    state: j.state.clone(),
                    error: j.error.clone(),
                })
                .collect(),
            at_ms: crate::utc_now_ms(),
        }
    }

    /// Publishes an ended update's final result if it came from MQTT; marks it published on
    /// the broker's ack (until then a restart publishes it again).
    pub(super) fn publish_final(&self, rid: i64) {
        let request: Option<String> = self
            .reader
            .query_row(
                "SELECT request_id FROM firmware_rollouts WHERE id = ?1",
                params![rid],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or(None)
            .flatten();
        let Some(request) = request else { return };
        let Some(v) = self.list(Some(rid)).ok().and_then(|mut v| v.pop()) else {
            return;
        };
        let r = self.result_of(&v, request);
        let (tx, rx) = oneshot::channel::<()>();
        self.publish(
            contract::firmware_result_topic(&self.gateway, FirmwareTopic::Update),
            serde_json::to_vec(&r).expect("serializes"),
            Some(tx),
        );
        let store = self.store.clone();
        tokio::spawn(async move {
            if rx.await.is_ok() {
                let _ = store
                    .exec(move |c| {
                        c.execute(
                            "UPDATE firmware_rollouts SET result_published = 1 WHERE id = ?1",
                            params![rid],
                        )
                        .map(|_| ())
                    })
                    .await;
            }
        });
    }

    /// Final results of MQTT updates that ended while the broker was out of reach (or before a
    /// crash): published again.
    pub(super) fn republish_results(&self) -> rusqlite::Result<()> {
        let ids: Vec<i64> = {
            let mut st = self.reader.prepare(
                "SELECT id FROM firmware_rollouts
                 WHERE request_id IS NOT NULL AND state != 'running' AND result_published = 0",
            )?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for rid in ids {
            self.publish_final(rid);
        }
        Ok(())
    }
}
