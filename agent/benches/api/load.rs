//! The agent under test and the clients that load it: `ferry run` as a child process, one timed
//! GET, sequential runs, closed-loop clients and a paced (open-loop) client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::common::{free_addr, fresh_dir, spawn_agent, stop_and_measure};
use crate::report::{route_of, LoadRow, PacedStats, Stats};

pub struct AgentProc {
    pub child: tokio::process::Child,
    pub api: SocketAddr,
    pub tcp: SocketAddr,
    pub dir: PathBuf,
    pub store: PathBuf,
    pub started_s: f64,
}

impl AgentProc {
    pub fn base(&self) -> String {
        format!("http://{}", self.api)
    }
}

/// `ferry run` on `store` (a fresh file in a temp dir when `None`), waiting until `/healthz` answers.
pub async fn start_agent(tag: &str, store: Option<&Path>) -> AgentProc {
    let dir = fresh_dir(&format!("api-{tag}"));
    let store = store.map_or_else(|| dir.join("ferry.db"), Path::to_path_buf);
    let api = free_addr();
    let tcp = free_addr();
    let t = Instant::now();
    let mut child = spawn_agent(
        &dir,
        &format!(
            "[gateway]\nid = \"bench\"\n[api]\nlisten = \"{api}\"\n[store]\npath = {:?}\ndurability = \"full\"\nmax_db_size = \"0\"\n[devices]\ntcp_listen = \"{tcp}\"\n",
            store.display().to_string()
        ),
    );
    let client = http_client();
    loop {
        if let Ok(r) = client.get(format!("http://{api}/healthz")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the agent exited while starting: {status}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the agent's API did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    AgentProc {
        child,
        api,
        tcp,
        dir,
        store,
        started_s: t.elapsed().as_secs_f64(),
    }
}

/// SIGTERM, wait; returns (peak RSS MB, CPU s, events stored).
pub async fn stop_agent(mut a: AgentProc) -> (f64, f64, i64) {
    let out = stop_and_measure(&mut a.child, &a.store, Duration::from_secs(60)).await;
    let _ = std::fs::remove_dir_all(&a.dir);
    out
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(4)
        .build()
        .unwrap()
}

pub struct Resp {
    pub ms: f64,
    pub status: u16,
    pub body: Vec<u8>,
}

/// One request, timed from sending to the last body byte.
pub async fn get(c: &reqwest::Client, url: &str) -> Resp {
    let t = Instant::now();
    match c.get(url).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.bytes().await;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            Resp {
                ms,
                status,
                body: body.map(|b| b.to_vec()).unwrap_or_default(),
            }
        }
        Err(_) => Resp {
            ms: t.elapsed().as_secs_f64() * 1e3,
            status: 0,
            body: Vec::new(),
        },
    }
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or(serde_json::Value::Null)
}

/// Sequential requests; panics on a non-2xx (a latency figure of errors would mislead).
pub async fn timed_all(c: &reqwest::Client, urls: &[String]) -> (Vec<f64>, Vec<Vec<u8>>) {
    let (mut ms, mut bodies) = (Vec::with_capacity(urls.len()), Vec::new());
    for u in urls {
        let r = get(c, u).await;
        assert!(
            (200..300).contains(&r.status),
            "GET {u}: status {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        ms.push(r.ms);
        bodies.push(r.body);
    }
    (ms, bodies)
}

/// Picks the next request path (with query) for a load client.
pub type Picker = Arc<dyn Fn(&mut SmallRng) -> String + Send + Sync>;

/// `clients` closed-loop clients for `secs`, each on its own keep-alive connection.
pub async fn closed_loop(
    base: &str,
    route: &str,
    clients: usize,
    secs: u64,
    pick: Picker,
) -> LoadRow {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (base, pick) = (base.to_owned(), pick.clone());
            tokio::spawn(async move {
                let c = http_client();
                let mut rng = SmallRng::seed_from_u64(1000 + i as u64);
                let (mut ms, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let r = get(&c, &format!("{base}{}", pick(&mut rng))).await;
                    if (200..300).contains(&r.status) {
                        ms.push(r.ms);
                    } else {
                        errors += 1;
                    }
                }
                (ms, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (ms, e) = t.await.unwrap();
        all.extend(ms);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let requests = all.len() as u64 + errors;
    let s = Stats::of(all);
    LoadRow {
        route: route.into(),
        clients,
        secs,
        requests,
        req_per_s: requests as f64 / secs,
        p50_ms: s.p50_ms,
        p99_ms: s.p99_ms,
        errors,
    }
}

/// Open-loop client: request `i` is due at `start + i / rate`, whatever the answers take, sent by
/// one of `workers` connections; stops issuing at `start + window`.
pub async fn paced(
    base: String,
    rate: u64,
    window: Duration,
    workers: usize,
    pick: Picker,
) -> PacedStats {
    let start = tokio::time::Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let total = (rate as f64 * window.as_secs_f64()) as u64;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (base, pick, next) = (base.clone(), pick.clone(), next.clone());
            tokio::spawn(async move {
                let c = http_client();
                let mut rng = SmallRng::seed_from_u64(5000 + w as u64);
                let mut out: Vec<(u16, f64, f64, &'static str)> = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + Duration::from_micros(i * 1_000_000 / rate);
                    tokio::time::sleep_until(due).await;
                    let late = due.elapsed().as_secs_f64() * 1e3;
                    let path = pick(&mut rng);
                    let r = get(&c, &format!("{base}{path}")).await;
                    out.push((r.status, r.ms, late, route_of(&path)));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut not_ok = BTreeMap::new();
    let (mut ok, mut failed) = (0, 0);
    let mut by_route: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for (status, ms, _, route) in &all {
        by_route.entry(route).or_default().push(*ms);
        match status {
            0 => failed += 1,
            200..=299 => ok += 1,
            s => *not_ok.entry(*s).or_insert(0) += 1,
        }
    }
    let lat = Stats::of(all.iter().map(|x| x.1).collect());
    let late = Stats::of(all.iter().map(|x| x.2).collect());
    PacedStats {
        sent: all.len() as u64,
        req_per_s: all.len() as f64 / elapsed,
        ok,
        not_ok,
        failed,
        p50_ms: lat.p50_ms,
        p99_ms: lat.p99_ms,
        late_p99_ms: late.p99_ms,
        by_route: by_route
            .into_iter()
            .map(|(k, v)| (k, Stats::of(v)))
            .collect(),
    }
}
