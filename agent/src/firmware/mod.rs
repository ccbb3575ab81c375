//! Firmware updates of the devices behind the gateway (PROTOCOL.md section 9): signed bundles,
//! rollouts to many devices, one job per device.
//!
//! Path of an image: a bundle ([`bundle`], signed offline) is uploaded (local API, `ferry flash`,
//! or the MQTT topic `ferry/v1/{gateway}/firmware/bundle`) and stored once by its SHA-256 (table `firmware_bundles`) → a rollout (`firmware_rollouts`)
//! names devices and the bundle → one job per device (`firmware_jobs`, its id is the transfer id on
//! the wire) → this actor sends the job's Begin, chunks and Commit on the device's link, driven by
//! the device's `UpdateStatus` through the sans-IO [`transfer::Transfer`] → the device writes its
//! flash, resets into the image and reports `Done` (or why not).
//!
//! One actor task owns every job; the policies are sans-IO ([`transfer::Transfer`] per job,
//! [`rollout::Rollout`] per rollout), the actor only stores, reads and sends. Invariants:
//! - A bundle is verified (hash, signature) before it is stored; when `[firmware] keys` names
//!   trusted keys, only bundles signed by one of them are taken.
//! - Jobs and rollouts are stored before anything is sent, and every change of a job's state is
//!   stored (its offset at most once a second): after a restart, jobs go on from where the devices
//!   say they are, not from zero.
//! - At most one job per device is started at a time; at most `concurrency` jobs of a rollout are
//!   started at once; once more than `max_failures` of its jobs failed, a rollout starts no more.
//! - An update requested over MQTT (`.../firmware/update`) is stored with its request id before
//!   the message is acked, so a redelivered request never starts a second update; its results
//!   (`accepted` or `rejected` at once, the final one when every job ended) are published on
//!   `.../firmware/update/result`, and a final result the broker never acked goes out again after
//!   a restart.
//! - Chunks go to a device's link only within its window (a few KiB per device), so an update
//!   never takes the link from the device's samples and acks, and other devices' ingest never
//!   waits for it.
pub mod bundle;
mod cloud;
mod model;
mod reads;
pub mod rollout;
pub mod transfer;

pub use model::{BundleInfo, JobView, RolloutSpec, RolloutView};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_wire::UpdateStatus;
use rusqlite::{params, Connection};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::commands::Completion;
use crate::store::writer::StoreHandle;
use bundle::Bundle;
use ferry_contract::FirmwareTopic;
use rollout::Rollout;
use transfer::{Offer, Out, Outcome, Phase, Transfer};

/// How often a job's offset is stored while it moves.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// An update message for one device's link, owned (the link encodes it).
#[derive(Debug, Clone)]
pub enum UpdateFrame {
    /// `UpdateBegin`.
    Begin(Arc<Offer>),
    /// `UpdateChunk`.
    Chunk {
        /// Transfer id.
        id: u32,
        /// Offset.
        offset: u32,
        /// Bytes.
        data: Vec<u8>,
    },
    /// `UpdateCommit`.
    Commit(u32),
    /// `UpdateAbort`.
    Abort(u32),
}

/// A message for the uplink to publish (firmware results, replayed events); `delivered` fires on
/// its PUBACK.
#[derive(Debug)]
pub struct OutgoingMessage {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Stored events in it (a replay); 0 for a firmware result.
    pub events: usize,
    /// Told when the broker acked it.
    pub delivered: Option<oneshot::Sender<()>>,
}

enum Req {
    Mqtt {
        what: FirmwareTopic,
        payload: Vec<u8>,
        completion: Completion,
    },
    Status {
        device: String,
        firmware: String,
        status: UpdateStatus,
        link: mpsc::Sender<UpdateFrame>,
    },
    AddBundle(
        Box<Bundle>,
        oneshot::Sender<Result<(BundleInfo, bool), String>>,
    ),
    Start(RolloutSpec, oneshot::Sender<Result<RolloutView, String>>),
    Cancel(i64, oneshot::Sender<Result<RolloutView, String>>),
    List(Option<i64>, oneshot::Sender<Vec<RolloutView>>),
    Bundles(oneshot::Sender<Vec<BundleInfo>>),
}

/// Cheap handle to the firmware actor.
#[derive(Clone)]
pub struct FirmwareHandle {
    tx: mpsc::Sender<Req>,
    events: broadcast::Sender<JobView>,
}

impl FirmwareHandle {
    /// A device reported its update status on a link (the link it came on carries the answer);
    /// `firmware` is the version its Hello reported.
    pub async fn status(
        &self,
        device: String,
        firmware: String,
        status: UpdateStatus,
        link: mpsc::Sender<UpdateFrame>,
    ) {
        let _ = self
            .tx
            .send(Req::Status {
                device,
                firmware,
                status,
                link,
            })
            .await;
    }

    async fn ask<T>(&self, req: impl FnOnce(oneshot::Sender<T>) -> Req) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(req(tx)).await.ok()?;
        rx.await.ok()
    }

    /// A message on this gateway's `firmware/bundle` or `firmware/update` topic; `completion`
    /// (its PUBACK) runs once it is safe (stored, or answered).
    pub async fn mqtt(&self, what: FirmwareTopic, payload: Vec<u8>, completion: Completion) {
        let _ = self
            .tx
            .send(Req::Mqtt {
                what,
                payload,
                completion,
            })
            .await;
    }

    /// Stores a verified bundle; `(info, true)` when it was new.
    pub async fn add_bundle(&self, b: Bundle) -> Result<(BundleInfo, bool), String> {
        self.ask(|tx| Req::AddBundle(Box::new(b), tx))
            .await
            .unwrap_or_else(|| Err("the firmware service stopped".into()))
    }

    /// Starts a rollout.
    pub async fn start(&self, spec: RolloutSpec) -> Result<RolloutView, String> {
        self.ask(|tx| Req::Start(spec, tx))
            .await
            .unwrap_or_else(|| Err("the firmware service stopped".into()))
    }

    /// Cancels a rollout's jobs that can still be cancelled.
    pub async fn cancel(&self, rollout: i64) -> Result<RolloutView, String> {
        self.ask(|tx| Req::Cancel(rollout, tx))
            .await
            .unwrap_or_else(|| Err("the firmware service stopped".into()))
    }

    /// Rollouts (one, or all newest first) with their jobs.
    pub async fn list(&self, rollout: Option<i64>) -> Vec<RolloutView> {
        self.ask(|tx| Req::List(rollout, tx))
            .await
            .unwrap_or_default()
    }

    /// Stored bundles.
    pub async fn bundles(&self) -> Vec<BundleInfo> {
        self.ask(Req::Bundles).await.unwrap_or_default()
    }

    /// Every change of a job (state or progress), live.
    pub fn subscribe(&self) -> broadcast::Receiver<JobView> {
        self.events.subscribe()
    }
}

struct Job {
    id: i64,
    rollout: i64,
    device: String,
    t: Transfer,
    offer: Arc<Offer>,
    saved_offset: u32,
    saved_state: &'static str,
    saved_attempts: u32,
    saved_at: Instant,
    updated_ms: i64,
}

/// Starts the actor over the store (`reader` for loading, `store` for every write); results for
/// the cloud go to `results` (the uplink publishes them).
pub async fn spawn(
    reader: Connection,
    store: StoreHandle,
    trusted: Vec<[u8; 32]>,
    gateway: String,
    results: mpsc::Sender<OutgoingMessage>,
    shutdown: CancellationToken,
) -> rusqlite::Result<(FirmwareHandle, tokio::task::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(256);
    let (events, _) = broadcast::channel(1024);
    let mut actor = Actor {
        reader,
        store,
        trusted,
        images: HashMap::new(),
        rollouts: HashMap::new(),
        jobs: Vec::new(),
        links: HashMap::new(),
        events: events.clone(),
        gateway,
        results,
    };
    actor.load()?;
    actor.republish_results()?;
    Ok((
        FirmwareHandle { tx, events },
        tokio::spawn(actor.run(rx, shutdown)),
    ))
}

struct Actor {
    reader: Connection,
    store: StoreHandle,
    trusted: Vec<[u8; 32]>,
    /// Images of bundles with open jobs, by SHA-256 hex.
    images: HashMap<String, Arc<Vec<u8>>>,
    rollouts: HashMap<i64, Rollout>,
    /// Open jobs, in creation order.
    jobs: Vec<Job>,
    links: HashMap<String, mpsc::Sender<UpdateFrame>>,
    events: broadcast::Sender<JobView>,
    gateway: String,
    results: mpsc::Sender<OutgoingMessage>,
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Queued => "queued",
        Phase::Transferring => "transferring",
        Phase::Rebooting => "rebooting",
        Phase::Ended(Outcome::Done) => "done",
        Phase::Ended(Outcome::Failed(_)) => "failed",
        Phase::Ended(Outcome::Cancelled) => "cancelled",
    }
}

fn phase_from(name: &str) -> Phase {
    match name {
        "transferring" => Phase::Transferring,
        "rebooting" => Phase::Rebooting,
        _ => Phase::Queued,
    }
}

/// `*` any run, `?` one character; anything else literal.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    go(&p, &s)
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Req>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = rx.recv() => match r {
                    None => break,
                    Some(Req::Status { device, firmware, status, link }) => {
                        // A link whose session is now this device's is no other device's.
                        self.links.retain(|d, l| *d == device || !l.same_channel(&link));
                        self.links.insert(device.clone(), link);
                        let now = Instant::now();
                        if let Some(i) = self.started_job_of(&device) {
                            let outs = self.jobs[i].t.status(now, &status, &firmware);
                            self.send(i, outs);
                            self.after_change(i).await;
                        }
                        self.schedule().await;
                    }
                    Some(Req::Mqtt { what, payload, completion }) => {
                        match what {
                            FirmwareTopic::Bundle => self.mqtt_bundle(&payload, completion).await,
                            FirmwareTopic::Update => self.mqtt_update(&payload, completion).await,
                        }
                        self.schedule().await;
                    }
                    Some(Req::AddBundle(b, reply)) => {
                        let _ = reply.send(self.add_bundle(*b).await);
                    }
                    Some(Req::Start(spec, reply)) => {
                        let r = self.start(spec).await;
                        self.schedule().await;
                        let _ = reply.send(r);
                    }
                    Some(Req::Cancel(id, reply)) => {
                        let _ = reply.send(self.cancel(id).await);
                    }
                    Some(Req::List(id, reply)) => {
                        let _ = reply.send(self.list(id).unwrap_or_default());
                    }
                    Some(Req::Bundles(reply)) => {
                        let _ = reply.send(self.bundle_list().unwrap_or_default());
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.links.retain(|_, l| !l.is_closed());
                    for i in 0..self.jobs.len() {
                        if !self.links.contains_key(&self.jobs[i].device) {
                            self.jobs[i].t.detach();
                        }
                        let outs = self.jobs[i].t.tick(now);
                        self.send(i, outs);
                        self.after_change(i).await;
                    }
                    self.schedule().await;
                }
            }
        }
    }

    /// The started job of `device` (queued ones wait for [`Actor::schedule`]).
    fn started_job_of(&self, device: &str) -> Option<usize> {
        self.jobs
            .iter()
            .position(|j| j.device == device && j.t.is_active())
    }

    fn send(&mut self, i: usize, outs: Vec<Out>) {
        let j = &self.jobs[i];
        let Some(link) = self.links.get(&j.device) else {
            return;
        };
        let image = self.images.get(&bundle::to_hex(&j.offer.sha256));
        for o in outs {
            let f = match o {
                Out::Begin => UpdateFrame::Begin(j.offer.clone()),
                Out::Chunk { offset, len } => {
                    let Some(img) = image else { continue };
                    UpdateFrame::Chunk {
                        id: j.offer.id,
                        offset,
                        data: img[offset as usize..(offset + len) as usize].to_vec(),
                    }
                }
                Out::Commit => UpdateFrame::Commit(j.offer.id),
                Out::Abort => UpdateFrame::Abort(j.offer.id),
            };
            // A full link queue drops the frame: the transfer's resend rules recover.
            let _ = link.try_send(f);
        }
    }

    fn view(&self, j: &Job) -> JobView {
        JobView {
            id: j.id,
            rollout: j.rollout,
            device: j.device.clone(),
            state: phase_name(j.t.phase()).into(),
            offset: j.t.offset(),
            length: j.offer.length,
            attempts: j.t.attempts(),
            error: match j.t.outcome() {
                Some(Outcome::Failed(f)) => Some(f.as_str().into()),
                _ => None,
            },
            version: j.offer.version.clone(),
            updated_ms: j.updated_ms,
        }
    }

    /// Stores a job's change (state at once, offset at most once a second), tells subscribers,
    /// and settles an ended job with its rollout.
    async fn after_change(&mut self, i: usize) {
        let now = Instant::now();
        let j = &self.jobs[i];
        let view = self.view(j);
        let state = phase_name(j.t.phase());
        let state_changed = j.saved_state != state || j.saved_attempts != view.attempts;
        let moved = view.offset != j.saved_offset;
        let save_progress = moved && now.duration_since(j.saved_at) >= PROGRESS_EVERY;
        if !(state_changed || save_progress) {
            if moved {
                let _ = self.events.send(view);
            }
            return;
        }
        let utc = crate::utc_now_ms();
        let ended = j.t.outcome().is_some();
        let (id, v) = (j.id, view.clone());
        let stored = self
            .store
            .exec(move |c| {
                c.execute(
                    "UPDATE firmware_jobs SET state = ?2, bytes_done = ?3, attempts = ?4, last_error = ?5,
                     updated_ms = ?6, finished_ms = CASE WHEN ?7 THEN ?6 ELSE finished_ms END WHERE id = ?1",
                    params![id, v.state, v.offset, v.attempts, v.error, utc, ended],
                )
                .map(|_| ())
            })
            .await;
        if let Err(e) = stored {
            tracing::warn!(job = id, error = %e, "Firmware job state not stored; retrying with the next change.");
            return;
        }
        let j = &mut self.jobs[i];
        j.saved_offset = view.offset;
        j.saved_state = state;
        j.saved_attempts = view.attempts;
        j.saved_at = now;
        j.updated_ms = utc;
        let view = JobView {
            updated_ms: utc,
            ..view
        };
        if state_changed {
            tracing::info!(job = view.id, device = %view.device, state = %view.state, error = ?view.error, offset = view.offset, "Firmware job.");
        }
        let _ = self.events.send(view);
        if let Some(o) = self.jobs[i].t.outcome() {
            let rollout = self.jobs[i].rollout;
            if let Some(r) = self.rollouts.get_mut(&rollout) {
                if r.ended(o) {
                    tracing::warn!(
                        rollout,
                        "Rollout stopped: more than {} devices failed.",
                        r.max_failures()
                    );
                }
            }
        }
    }

    /// Starts queued jobs where their rollout has room and their device is free and present;
    /// settles stopped and finished rollouts.
    async fn schedule(&mut self) {
        let now = Instant::now();
        let ids: Vec<i64> = self.rollouts.keys().copied().collect();
        for rid in ids {
            let stopped = self.rollouts[&rid].is_stopped();
            if stopped {
                for i in 0..self.jobs.len() {
                    if self.jobs[i].rollout == rid && self.jobs[i].t.phase() == Phase::Queued {
                        self.jobs[i].t.stop();
                        self.after_change(i).await;
                    }
                }
            }
            let active = self
                .jobs
                .iter()
                .filter(|j| j.rollout == rid && j.t.is_active())
                .count();
            let mut room = self.rollouts[&rid].room(active);
            for i in 0..self.jobs.len() {
                if room == 0 {
                    break;
                }
                let j = &self.jobs[i];
                if j.rollout != rid
                    || j.t.phase() != Phase::Queued
                    || !self.links.contains_key(&j.device)
                {
                    continue;
                }
                let busy = self
                    .jobs
                    .iter()
                    .any(|o| o.device == j.device && o.t.is_active());
                if busy {
                    continue;
                }
                // The device is present (it reported a status on its link): begin at once.
                self.jobs[i].t.attach();
                let outs = self.jobs[i].t.start(now);
                self.send(i, outs);
                self.after_change(i).await;
                room -= 1;
            }
            let open = self
                .jobs
                .iter()
                .any(|j| j.rollout == rid && j.t.outcome().is_none());
            if !open {
                let state = self.rollouts[&rid].final_state();
                let utc = crate::utc_now_ms();
                let done = self
                    .store
                    .exec(move |c| {
                        c.execute(
                            "UPDATE firmware_rollouts SET state = ?2, finished_ms = ?3 WHERE id = ?1",
                            params![rid, state, utc],
                        )
                        .map(|_| ())
                    })
                    .await;
                if done.is_ok() {
                    tracing::info!(rollout = rid, state, "Rollout finished.");
                    self.rollouts.remove(&rid);
                    self.publish_final(rid);
                }
            }
        }
        self.jobs
            .retain(|j| j.t.outcome().is_none() || self.rollouts.contains_key(&j.rollout));
        let open: std::collections::HashSet<String> = self
            .jobs
            .iter()
            .map(|j| bundle::to_hex(&j.offer.sha256))
            .collect();
        self.images.retain(|sha, _| open.contains(sha));
    }

    async fn add_bundle(&mut self, b: Bundle) -> Result<(BundleInfo, bool), String> {
        if !self.trusted.is_empty() && !self.trusted.contains(&b.key()) {
            return Err(format!(
                "the bundle is signed with key {}, which is not one of [firmware] keys",
                b.manifest.key
            ));
        }
        let sha = b.manifest.sha256.clone();
        if let Some(info) = self.bundle_info(&sha).map_err(|e| e.to_string())? {
            let same = info.version == b.manifest.version
                && info.board == b.manifest.board
                && info.key == b.manifest.key;
            if !same {
                // One image, one description: a device reports the version it was built with,
                // so the same bytes signed as another version could never show that version.
                return Err(format!(
                    "this image (sha256 {sha}) is stored as version {} for board {} (key {}); \
                     an image is signed once: build the new version and sign that",
                    info.version, info.board, info.key
                ));
            }
            return Ok((info, false));
        }
        let utc = crate::utc_now_ms();
        let m = b.manifest.clone();
        let (sig, key) = (b.signature().to_vec(), b.key().to_vec());
        let image = b.image;
        self.store
            .exec(move |c| {
                c.execute(
                    "INSERT OR IGNORE INTO firmware_bundles (sha256, version, board, length, signature, public_key, image, added_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![m.sha256, m.version, m.board, m.length, sig, key, image, utc],
                )
                .map(|_| ())
            })
            .await
            .map_err(|e| format!("storing the bundle: {e}"))?;
        let info = self
            .bundle_info(&sha)
            .map_err(|e| e.to_string())?
            .ok_or("the bundle was not stored")?;
        tracing::info!(sha256 = %info.sha256, version = %info.version, board = %info.board, "Firmware bundle stored.");
        Ok((info, true))
    }

    async fn start(&mut self, spec: RolloutSpec) -> Result<RolloutView, String> {
        self.start_with(spec, None).await
    }

    async fn start_with(
        &mut self,
        spec: RolloutSpec,
        request_id: Option<String>,
    ) -> Result<RolloutView, String> {
        let sha = spec.bundle.to_ascii_lowercase();
        bundle::sha_from_hex(&sha).map_err(|_| {
            format!(
                "bundle {:?}: a bundle is named by its SHA-256, 64 hex digits",
                spec.bundle
            )
        })?;
        if self.bundle_info(&sha).map_err(|e| e.to_string())?.is_none() {
            return Err(format!("bundle {sha} is not stored; upload it first (POST /api/v1/firmware/bundles or ferry flash)"));
        }
        if spec.devices.is_empty() {
            return Err("devices: name at least one device id or glob".into());
        }
        if spec.concurrency == 0 {
            return Err("concurrency: at least 1".into());
        }
        let known: Vec<String> = {
            let mut st = self
                .reader
                .prepare("SELECT device_id FROM devices ORDER BY device_id")
                .map_err(|e| e.to_string())?;
            let rows = st.query_map([], |r| r.get(0)).map_err(|e| e.to_string())?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| e.to_string())?
        };
        let mut devices: Vec<String> = Vec::new();
        for d in &spec.devices {
            if d.contains(['*', '?']) {
                let matched: Vec<&String> = known.iter().filter(|k| glob_match(d, k)).collect();
                if matched.is_empty() {
                    return Err(format!(
                        "devices: {d:?} matches no device the gateway knows"
                    ));
                }
                devices.extend(matched.into_iter().cloned());
            } else {
                crate::commands::check_device_id(d).map_err(|e| format!("devices: {d:?}: {e}"))?;
                devices.push(d.clone());
            }
        }
        devices.sort();
        devices.dedup();
        let utc = crate::utc_now_ms();
        let s = spec.clone();
        let list = devices.clone();
        let bundle_sha = sha.clone();
        // The writer runs this in its transaction: the rollout and its jobs commit together.
        let new_id = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let id_out = new_id.clone();
        self.store
            .exec(move |tx| {
                tx.execute(
                    "INSERT INTO firmware_rollouts (bundle, targets, force, concurrency, max_failures, state, created_ms, request_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7)",
                    params![bundle_sha, serde_json::to_string(&s.devices).unwrap_or_default(), s.force, s.concurrency, s.max_failures, utc, request_id],
                )?;
                let rid = tx.last_insert_rowid();
                for d in &list {
                    tx.execute(
                        "INSERT INTO firmware_jobs (rollout, device_id, state, updated_ms) VALUES (?1, ?2, 'queued', ?3)",
                        params![rid, d, utc],
                    )?;
                }
                id_out.store(rid, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            })
            .await
            .map_err(|e| format!("storing the rollout: {e}"))?;
        let rid = new_id.load(std::sync::atomic::Ordering::Relaxed);
        self.rollouts
            .insert(rid, Rollout::new(rid, spec.concurrency, spec.max_failures));
        let ids: Vec<(i64, String)> = {
            let mut st = self
                .reader
                .prepare("SELECT id, device_id FROM firmware_jobs WHERE rollout = ?1 ORDER BY id")
                .map_err(|e| e.to_string())?;
            let rows = st
                .query_map(params![rid], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| e.to_string())?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| e.to_string())?
        };
        for (id, device) in ids {
            if id > i64::from(u32::MAX) {
                return Err("job ids ran out of the wire's 32 bits".into());
            }
            let offer = self
                .offer_of(id, &sha, spec.force)
                .map_err(|e| e.to_string())?
                .ok_or("the bundle vanished")?;
            self.jobs.push(Job {
                id,
                rollout: rid,
                device,
                t: Transfer::new((*offer).clone(), Phase::Queued, 0),
                offer,
                saved_offset: 0,
                saved_state: "queued",
                saved_attempts: 0,
                saved_at: Instant::now(),
                updated_ms: utc,
            });
        }
        tracing::info!(rollout = rid, devices = devices.len(), bundle = %sha, "Rollout started.");
        self.list(Some(rid))
            .map_err(|e| e.to_string())?
            .pop()
            .ok_or_else(|| "the rollout was not stored".into())
    }

    async fn cancel(&mut self, rid: i64) -> Result<RolloutView, String> {
        if !self.rollouts.contains_key(&rid) {
            return match self.list(Some(rid)).map_err(|e| e.to_string())?.pop() {
                Some(v) => Ok(v), // already over: nothing to cancel
                None => Err(format!("no rollout {rid}")),
            };
        }
        let stored = self
            .store
            .exec(move |c| {
                c.execute(
                    "UPDATE firmware_rollouts SET state = 'cancelling' WHERE id = ?1 AND state = 'running'",
                    params![rid],
                )
                .map(|_| ())
            })
            .await;
        if let Err(e) = stored {
            return Err(format!("the cancellation was not stored: {e}"));
        }
        if let Some(r) = self.rollouts.get_mut(&rid) {
            r.cancel();
        }
        for i in 0..self.jobs.len() {
            if self.jobs[i].rollout != rid {
                continue;
            }
            let (cancelled, outs) = self.jobs[i].t.cancel();
            if cancelled {
                self.send(i, outs);
                self.after_change(i).await;
            }
        }
        self.schedule().await;
        self.list(Some(rid))
            .map_err(|e| e.to_string())?
            .pop()
            .ok_or_else(|| format!("no rollout {rid}"))
    }
}
