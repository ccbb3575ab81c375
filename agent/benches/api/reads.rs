//! Reads over the big store: each handler's SQL timed in-process, the same requests over HTTP
//! (latency rows), and closed-loop throughput.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ferry_agent::store::{self, query};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;

use crate::dataset::{device_name, ensure_dataset, warm_page_cache};
use crate::load::{
    closed_loop, get, http_client, json, start_agent, stop_agent, timed_all, Picker,
};
use crate::plans::print_plans;
use crate::report::{print_latency, print_load, LatencyRow, LoadRow, Stats};
use crate::{Cfg, DAY_MS, HOUR_MS, SENSORS};

/// Runs `f` on each item on a read connection in this process (on a blocking thread); the
/// milliseconds of each call, in item order.
pub async fn sql_times<T: Send + 'static>(
    path: &Path,
    items: Vec<T>,
    f: impl Fn(&Connection, &T) + Send + 'static,
) -> Vec<f64> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let _w = Connection::open(&path).unwrap();
        let c = store::open_reader(&path).unwrap();
        let mut ms = Vec::with_capacity(items.len());
        for it in items.iter().take(3) {
            f(&c, it); // prepare_cached warm-up, as on the agent's pooled connections
        }
        for it in &items {
            let t = Instant::now();
            f(&c, it);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms
    })
    .await
    .unwrap()
}

pub fn key_of(c: &Connection, dev: &str) -> i64 {
    query::device_key(c, dev).unwrap().unwrap()
}

pub struct ReadResults {
    pub latency: Vec<LatencyRow>,
    pub load: Vec<LoadRow>,
    pub lines: Vec<String>,
}

pub async fn reads(cfg: &Cfg) -> ReadResults {
    let mut lines = Vec::new();
    let (ds, line) = tokio::task::block_in_place(|| ensure_dataset(cfg));
    println!("{line}");
    lines.push(line);
    let line = tokio::task::block_in_place(|| warm_page_cache(&ds.path));
    println!("{line}");
    lines.push(line);
    tokio::task::block_in_place(|| print_plans(&ds));

    let mut rng = SmallRng::seed_from_u64(42);
    let n = cfg.requests;
    let dev = |rng: &mut SmallRng| device_name(rng.gen_range(0..ds.devices));
    // Every device, `latest_rounds` times, each round in a new random order.
    let mut latest_order = Vec::new();
    for _ in 0..cfg.latest_rounds {
        let mut round: Vec<u64> = (0..ds.devices).collect();
        for i in (1..round.len()).rev() {
            round.swap(i, rng.gen_range(0..=i));
        }
        latest_order.extend(round.into_iter().map(device_name));
    }
    // Events pages start anywhere that leaves two full pages (2,000 events) of the device after it.
    let page_from = ds.start_ms;
    let page_to = (ds.end_ms - 2000 / SENSORS.len() as i64 * ds.interval_ms).max(page_from + 1);
    let pages: Vec<(String, i64)> = (0..n)
        .map(|_| (dev(&mut rng), rng.gen_range(page_from..page_to)))
        .collect();
    let series_req: Vec<(String, &str)> = (0..n)
        .map(|_| (dev(&mut rng), SENSORS[rng.gen_range(0..SENSORS.len())].0))
        .collect();
    let day_end = DAY_MS + 24 * HOUR_MS;
    let few = (n / 5).max(10);

    // SQL only: the calls each handler makes, on a read connection in this process.
    println!("\ntiming the handlers' SQL in-process ...");
    let sql_latest = sql_times(&ds.path, latest_order.clone(), |c, d: &String| {
        key_of(c, d);
        query::latest(c, &ferry_agent::store::tail::TailView::default(), Some(d)).unwrap();
    })
    .await;
    let sql_all_latest = sql_times(&ds.path, vec![(); few], |c, _| {
        query::latest(c, &ferry_agent::store::tail::TailView::default(), None).unwrap();
    })
    .await;
    let sql_devices = sql_times(&ds.path, vec![(); few], |c, _| {
        query::devices(
            c,
            &ferry_agent::store::tail::TailView::default(),
            None,
            None,
        )
        .unwrap();
    })
    .await;
    let page = |c: &Connection, (d, since): &(String, i64)| {
        let f = query::EventFilter {
            device: Some(key_of(c, d)),
            since_ms: Some(*since),
            ..Default::default()
        };
        query::device_events(
            c,
            &ferry_agent::store::tail::TailView::default(),
            &f,
            None,
            1000,
        )
        .unwrap()
    };
    let sql_page = sql_times(&ds.path, pages.clone(), move |c, p| {
        page(c, p);
    })
    .await;
    // The cursor of each first page, then the second pages alone.
    let (path, first) = (ds.path.clone(), pages.clone());
    let pages2 = tokio::task::spawn_blocking(move || {
        let _w = Connection::open(&path).unwrap();
        let c = store::open_reader(&path).unwrap();
        first
            .iter()
            .filter_map(|p| {
                let last = page(&c, p).pop()?;
                Some((p.0.clone(), p.1, (last.ts_ms, last.id)))
            })
            .collect::<Vec<_>>()
    });
    let pages2 = pages2.await.unwrap();
    let sql_page2 = sql_times(&ds.path, pages2, |c, (d, since, after)| {
        let f = query::EventFilter {
            device: Some(key_of(c, d)),
            since_ms: Some(*since),
            ..Default::default()
        };
        query::device_events(
            c,
            &ferry_agent::store::tail::TailView::default(),
            &f,
            Some(*after),
            1000,
        )
        .unwrap();
    })
    .await;
    let series_sql = move |agg: query::Agg| {
        move |c: &Connection, (d, s): &(String, &str)| {
            let key = key_of(c, d);
            let info = query::devices(
                c,
                &ferry_agent::store::tail::TailView::default(),
                Some(d),
                None,
            )
            .unwrap();
            let idx = info[0].sensors.iter().find(|x| x.name == *s).unwrap().index;
            query::series(
                c,
                &ferry_agent::store::tail::TailView::default(),
                key,
                idx,
                DAY_MS,
                day_end,
                60_000,
                agg,
            )
            .unwrap();
        }
    };
    let sql_series = sql_times(&ds.path, series_req.clone(), series_sql(query::Agg::Avg)).await;
    let sql_series_last = sql_times(
        &ds.path,
        series_req[..few].to_vec(),
        series_sql(query::Agg::Last),
    )
    .await;
    // The handler's sensor lookup alone (`devices(Some(id))`), part of every /series.
    let sql_series_lookup = Stats::of(
        sql_times(&ds.path, series_req.clone(), |c, (d, _)| {
            query::devices(
                c,
                &ferry_agent::store::tail::TailView::default(),
                Some(d),
                None,
            )
            .unwrap();
        })
        .await,
    );

    let agent = start_agent("reads", Some(&ds.path)).await;
    let line = format!(
        "agent: `ferry run` on the store, API up in {:.1} s (opening runs PRAGMA quick_check)",
        agent.started_s
    );
    println!("{line}");
    lines.push(line);
    let base = agent.base();
    let c = http_client();
    // Warm-up: connection, prepared statements, the agent's read connections' page caches.
    for _ in 0..20 {
        get(
            &c,
            &format!("{base}/api/v1/devices/{}/latest", device_name(0)),
        )
        .await;
    }
    get(&c, &format!("{base}/api/v1/latest")).await;
    get(&c, &format!("{base}/api/v1/devices")).await;

    let mut rows = Vec::new();
    let row =
        |request: &str, ms: Vec<f64>, sql: Option<Stats>, target: Option<f64>, note: String| {
            let http = Stats::of(ms);
            LatencyRow {
                request: request.into(),
                http,
                sql,
                target_p99_ms: target,
                met: target.map(|t| http.p99_ms <= t),
                note,
            }
        };

    println!("HTTP latency rows ...");
    let urls: Vec<String> = latest_order
        .iter()
        .map(|d| format!("{base}/api/v1/devices/{d}/latest"))
        .collect();
    let (ms, bodies) = timed_all(&c, &urls).await;
    let sensors = json(&bodies[0])["sensors"]
        .as_array()
        .map_or(0, |a| a.len());
    rows.push(row(
        "GET /devices/{id}/latest (every device, random order)",
        ms,
        Some(Stats::of(sql_latest)),
        Some(2.0),
        format!(
            "{} rounds x {} devices; {sensors} sensors, {} B",
            cfg.latest_rounds,
            ds.devices,
            bodies[0].len()
        ),
    ));

    // The agent builds this body once per change (nothing commits here, so once per second, its
    // idle bound) and serves it to the requests in between; the first request pays the build.
    let urls = vec![format!("{base}/api/v1/latest"); n];
    let (ms, bodies) = timed_all(&c, &urls).await;
    let devices = json(&bodies[0])["devices"]
        .as_array()
        .map_or(0, |a| a.len());
    let first = ms[0];
    rows.push(row(
        "GET /latest (every device in one response)",
        ms,
        Some(Stats::of(sql_all_latest)),
        Some(2.0),
        format!(
            "{devices} devices, {:.0} KB; first request (builds the body) {first:.2} ms",
            bodies[0].len() as f64 / 1e3
        ),
    ));

    let urls: Vec<String> = pages
        .iter()
        .map(|(d, since)| format!("{base}/api/v1/events?device={d}&since={since}&limit=1000"))
        .collect();
    // Whether the page's cost depends on where T is (it would if the scan began at the device's
    // first row rather than at T).
    let mid = (page_from + page_to) / 2;
    let half = |first: bool| {
        let v: Vec<f64> = pages
            .iter()
            .zip(&sql_page)
            .filter(|((_, t), _)| (*t < mid) == first)
            .map(|(_, ms)| *ms)
            .collect();
        Stats::of(v).p50_ms
    };
    let (ms, bodies) = timed_all(&c, &urls).await;
    let mut next_urls = Vec::new();
    let mut counts = Vec::new();
    for (u, b) in urls.iter().zip(&bodies) {
        let v = json(b);
        counts.push(v["events"].as_array().map_or(0, |a| a.len()));
        if let Some(cursor) = v["next_cursor"].as_str() {
            next_urls.push(format!("{u}&cursor={cursor}"));
        }
    }
    let full = counts.iter().filter(|&&k| k == 1000).count();
    rows.push(row(
        "GET /events?device=D&since=T&limit=1000 (random D, T)",
        ms,
        Some(Stats::of(sql_page.clone())),
        Some(10.0),
        format!(
            "{full}/{} pages full, {:.0} KB; SQL p50 for T in the first / second half of the data: {:.2} / {:.2}",
            counts.len(),
            bodies[0].len() as f64 / 1e3,
            half(true),
            half(false)
        ),
    ));
    let (ms, bodies) = timed_all(&c, &next_urls).await;
    let full = bodies
        .iter()
        .filter(|b| json(b)["events"].as_array().map_or(0, |a| a.len()) == 1000)
        .count();
    rows.push(row(
        "  ... the same, following next_cursor once",
        ms,
        Some(Stats::of(sql_page2)),
        Some(10.0),
        format!("{full}/{} pages full", bodies.len()),
    ));

    let series_url = |d: &str, s: &str, agg: &str| {
        format!(
            "{base}/api/v1/series?device={d}&sensor={s}&since={DAY_MS}&until={day_end}&bucket=1m&agg={agg}"
        )
    };
    let urls: Vec<String> = series_req
        .iter()
        .map(|(d, s)| series_url(d, s, "avg"))
        .collect();
    let (ms, bodies) = timed_all(&c, &urls).await;
    let v = json(&bodies[0]);
    let points = v["points"].as_array().map_or(0, |a| a.len());
    let per_bucket = v["points"][0]["count"].as_i64().unwrap_or(0);
    rows.push(row(
        "GET /series?device&sensor, 1 day, bucket=1m, agg=avg",
        ms,
        Some(Stats::of(sql_series)),
        Some(20.0),
        format!(
            "{points} points of ~{per_bucket} events, {:.0} KB; SQL p50 of the sensor lookup (devices(Some(id))) alone: {:.2}",
            bodies[0].len() as f64 / 1e3,
            sql_series_lookup.p50_ms
        ),
    ));
    let urls: Vec<String> = series_req[..few]
        .iter()
        .map(|(d, s)| series_url(d, s, "last"))
        .collect();
    let (ms, bodies) = timed_all(&c, &urls).await;
    let points = json(&bodies[0])["points"].as_array().map_or(0, |a| a.len());
    rows.push(row(
        "GET /series?device&sensor, 1 day, bucket=1m, agg=last",
        ms,
        Some(Stats::of(sql_series_last)),
        Some(20.0),
        format!("{points} points"),
    ));

    let urls = vec![format!("{base}/api/v1/devices"); few];
    let (ms, bodies) = timed_all(&c, &urls).await;
    let devices = json(&bodies[0])["devices"]
        .as_array()
        .map_or(0, |a| a.len());
    rows.push(row(
        "GET /devices (all devices; for information)",
        ms,
        Some(Stats::of(sql_devices)),
        None,
        format!("{devices} devices, {:.0} KB", bodies[0].len() as f64 / 1e3),
    ));
    print_latency("reads (sequential, one keep-alive connection)", &rows);

    let mut load = Vec::new();
    if cfg.runs("load") {
        let ndev = ds.devices;
        let light: Picker = Arc::new(move |rng: &mut SmallRng| {
            format!(
                "/api/v1/devices/{}/latest",
                device_name(rng.gen_range(0..ndev))
            )
        });
        let (start, end) = (ds.start_ms, ds.end_ms);
        let mixed: Picker = Arc::new(move |rng: &mut SmallRng| {
            let d = device_name(rng.gen_range(0..ndev));
            match rng.gen_range(0..100) {
                0..70 => format!("/api/v1/devices/{d}/latest"),
                70..90 => format!(
                    "/api/v1/events?device={d}&since={}&limit=100",
                    rng.gen_range(start..end - HOUR_MS)
                ),
                _ => format!(
                    "/api/v1/series?device={d}&sensor={}&since={}&until={}&bucket=1m&agg=avg",
                    SENSORS[rng.gen_range(0..SENSORS.len())].0,
                    end - HOUR_MS,
                    end + 1
                ),
            }
        });
        for (route, pick) in [
            ("devices/{id}/latest (random device)", light),
            (
                "mix: 70% latest, 20% events limit=100, 10% series 1h/1m",
                mixed,
            ),
        ] {
            for clients in [8, 32] {
                println!("load: {route}, {clients} clients ...");
                load.push(closed_loop(&base, route, clients, cfg.load_secs, pick.clone()).await);
            }
        }
        print_load(
            "HTTP throughput (closed loop, keep-alive; client on the same 2 cores)",
            &load,
        );
    }
    let (rss, cpu, _) = stop_agent(agent).await;
    let line = format!("agent during reads: CPU {cpu:.1} s, peak RSS {rss:.1} MB");
    println!("{line}");
    lines.push(line);
    ReadResults {
        latency: rows,
        load,
        lines,
    }
}
