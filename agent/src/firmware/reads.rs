//! What the firmware actor reads from the store: the open updates and jobs at start, the bundles,
//! and the views of updates (their jobs' live progress filled in from memory).

use std::sync::Arc;
use std::time::Instant;

use rusqlite::{params, OptionalExtension};

use super::transfer::{Offer, Transfer};
use super::{
    bundle, phase_from, phase_name, rollout::Rollout, Actor, BundleInfo, Job, JobView, RolloutView,
};

impl Actor {
    pub(super) fn offer_of(
        &mut self,
        job_id: i64,
        sha: &str,
        force: bool,
    ) -> rusqlite::Result<Option<Arc<Offer>>> {
        let need_image = !self.images.contains_key(sha);
        let row = self
            .reader
            .query_row(
                "SELECT version, board, length, signature, CASE WHEN ?2 THEN image ELSE x'' END
                 FROM firmware_bundles WHERE sha256 = ?1",
                params![sha, need_image],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, u32>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((version, board, length, signature, image)) = row else {
            return Ok(None);
        };
        let (Ok(sha256), Ok(signature)) = (bundle::sha_from_hex(sha), signature.try_into()) else {
            return Ok(None);
        };
        self.images
            .entry(sha.to_owned())
            .or_insert_with(|| Arc::new(image));
        Ok(Some(Arc::new(Offer {
            id: job_id as u32,
            length,
            version,
            board,
            sha256,
            signature,
            force,
        })))
    }

    /// Open rollouts and jobs from the store.
    pub(super) fn load(&mut self) -> rusqlite::Result<()> {
        let rollouts: Vec<(i64, u32, u32, String, bool, bool)> = {
            let mut st = self.reader.prepare(
                "SELECT id, concurrency, max_failures, bundle, force, state = 'cancelling'
                 FROM firmware_rollouts WHERE state IN ('running', 'cancelling')",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for (id, concurrency, max_failures, sha, force, cancelling) in rollouts {
            let failed: u32 = self.reader.query_row(
                "SELECT count(*) FROM firmware_jobs WHERE rollout = ?1 AND state = 'failed'",
                params![id],
                |r| r.get(0),
            )?;
            let mut r = Rollout::new(id, concurrency, max_failures);
            r.restore_failures(failed);
            if cancelling {
                r.cancel();
            }
            self.rollouts.insert(id, r);
            let jobs: Vec<(i64, String, String, u32, u32, i64)> = {
                let mut st = self.reader.prepare(
                    "SELECT id, device_id, state, bytes_done, attempts, updated_ms FROM firmware_jobs
                     WHERE rollout = ?1 AND state IN ('queued', 'transferring', 'rebooting') ORDER BY id",
                )?;
                let rows = st.query_map(params![id], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for (job, device, state, offset, attempts, updated_ms) in jobs {
                let Some(offer) = self.offer_of(job, &sha, force)? else {
                    continue;
                };
                tracing::info!(job, device = %device, state = %state, "Firmware job resumed after a restart.");
                let mut t = Transfer::new((*offer).clone(), phase_from(&state), attempts);
                t.restore(offset, Instant::now());
                self.jobs.push(Job {
                    id: job,
                    rollout: id,
                    device,
                    t,
                    offer,
                    saved_offset: offset,
                    saved_state: phase_name(phase_from(&state)),
                    saved_attempts: attempts,
                    saved_at: Instant::now(),
                    updated_ms,
                });
            }
        }
        Ok(())
    }

    pub(super) fn bundle_info(&self, sha: &str) -> rusqlite::Result<Option<BundleInfo>> {
        self.reader
            .query_row(
                "SELECT sha256, version, board, length, public_key, added_ms FROM firmware_bundles WHERE sha256 = ?1",
                params![sha],
                |r| {
                    Ok(BundleInfo {
                        sha256: r.get(0)?,
                        version: r.get(1)?,
                        board: r.get(2)?,
                        length: r.get(3)?,
                        key: bundle::to_hex(&r.get::<_, Vec<u8>>(4)?),
                        added_ms: r.get(5)?,
                    })
                },
            )
            .optional()
    }

    pub(super) fn bundle_list(&self) -> rusqlite::Result<Vec<BundleInfo>> {
        let mut st = self
            .reader
            .prepare("SELECT sha256 FROM firmware_bundles ORDER BY added_ms DESC")?;
        let shas: Vec<String> = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(shas
            .iter()
            .filter_map(|s| self.bundle_info(s).ok().flatten())
            .collect())
    }

    /// Rollouts from the store, with live progress of open jobs.
    pub(super) fn list(&self, one: Option<i64>) -> rusqlite::Result<Vec<RolloutView>> {
        let mut st = self.reader.prepare(
            "SELECT r.id, r.bundle, coalesce(b.version, ''), r.state, r.concurrency, r.max_failures, r.created_ms
             FROM firmware_rollouts r LEFT JOIN firmware_bundles b ON b.sha256 = r.bundle
             WHERE ?1 IS NULL OR r.id = ?1 ORDER BY r.id DESC LIMIT 100",
        )?;
        let rows = st.query_map(params![one], |r| {
            Ok(RolloutView {
                id: r.get(0)?,
                bundle: r.get(1)?,
                version: r.get(2)?,
                state: r.get(3)?,
                concurrency: r.get(4)?,
                max_failures: r.get(5)?,
                created_ms: r.get(6)?,
                jobs: Vec::new(),
            })
        })?;
        let mut out: Vec<RolloutView> = rows.collect::<rusqlite::Result<_>>()?;
        let mut jobs = self.reader.prepare(
            "SELECT j.id, j.device_id, j.state, j.bytes_done, j.attempts, j.last_error, j.updated_ms,
                    coalesce(b.length, 0), coalesce(b.version, '')
             FROM firmware_jobs j JOIN firmware_rollouts r ON r.id = j.rollout
             LEFT JOIN firmware_bundles b ON b.sha256 = r.bundle WHERE j.rollout = ?1 ORDER BY j.id",
        )?;
        for r in &mut out {
            let rows = jobs.query_map(params![r.id], |x| {
                Ok(JobView {
                    id: x.get(0)?,
                    rollout: r.id,
                    device: x.get(1)?,
                    state: x.get(2)?,
                    offset: x.get(3)?,
                    attempts: x.get(4)?,
                    error: x.get(5)?,
                    updated_ms: x.get(6)?,
                    length: x.get(7)?,
                    version: x.get(8)?,
                })
            })?;
            r.jobs = rows.collect::<rusqlite::Result<_>>()?;
            for v in &mut r.jobs {
                if let Some(j) = self.jobs.iter().find(|j| j.id == v.id) {
                    *v = self.view(j);
                }
            }
        }
        Ok(out)
    }
}
