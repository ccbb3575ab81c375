//! Query plans: `EXPLAIN QUERY PLAN` of the reads' hot statements on the generated store. The
//! statements are the store's own (`ferry_agent::store::query` and `store::rollup`), not copies.

use std::collections::BTreeMap;

use ferry_agent::store::query::{self, Agg};
use ferry_agent::store::{self, rollup};
use rusqlite::types::ToSql;
use rusqlite::Connection;

use crate::dataset::{device_name, Dataset};
use crate::{DAY_MS, HOUR_MS};

/// The plan of `sql` with `args`, one line per step, indented by depth.
pub fn plan(c: &Connection, sql: &str, args: &[&dyn ToSql]) -> Vec<String> {
    let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let mut rows = st.query(args).unwrap();
    let mut depth: BTreeMap<i64, usize> = BTreeMap::new();
    let mut out = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        let (id, parent, detail): (i64, i64, String) =
            (r.get(0).unwrap(), r.get(1).unwrap(), r.get(3).unwrap());
        let d = depth.get(&parent).map_or(0, |d| d + 1);
        depth.insert(id, d);
        out.push(format!("{}{detail}", "  ".repeat(d)));
    }
    out
}

/// Prints the plan of each hot read on the generated store, with the statements the store runs.
pub fn print_plans(ds: &Dataset) {
    let _w = Connection::open(&ds.path).unwrap(); // keeps -wal/-shm for the read-only connection
    let c = store::open_reader(&ds.path).unwrap();
    let dev = device_name(ds.devices / 2);
    let key: i64 = query::device_key(&c, &dev)
        .unwrap()
        .expect("the device exists");
    let null: Option<String> = None;
    let since = DAY_MS + 3 * HOUR_MS;
    let after_ts = since + HOUR_MS;
    let (day_end, bucket) = (DAY_MS + 24 * HOUR_MS, 60_000i64);
    let items: Vec<(&str, String, Vec<&dyn ToSql>)> = vec![
        (
            "device_key (every device route)",
            query::DEVICE_KEY_SQL.into(),
            vec![&dev],
        ),
        (
            "latest, one device (devices/{id}/latest)",
            query::latest_sql(true),
            vec![&dev],
        ),
        (
            "latest, all devices (/latest)",
            query::latest_sql(false),
            vec![&null],
        ),
        (
            "devices, all (/devices)",
            query::devices_sql(false),
            vec![&null],
        ),
        (
            "devices, one (/devices/{id}, and every /series)",
            query::devices_sql(true),
            vec![&dev],
        ),
        (
            "sensors, all devices (inside devices(): /devices)",
            query::sensors_sql(false).into(),
            vec![&null],
        ),
        (
            "sensors, one device (inside devices(): /devices/{id}, every /series)",
            query::sensors_sql(true).into(),
            vec![&key],
        ),
        (
            "device_events, first page (/events?device=&since=&limit=1000)",
            query::device_events_sql(),
            vec![
                &key,
                &since,
                &i64::MAX,
                &i64::MIN,
                &i64::MIN,
                &null,
                &1000i64,
            ],
        ),
        (
            "device_events, after a cursor",
            query::device_events_sql(),
            vec![
                &key,
                &since,
                &i64::MAX,
                &after_ts,
                &12345i64,
                &null,
                &1000i64,
            ],
        ),
        (
            "series agg=avg from the events (/series?...&bucket=1m&agg=avg)",
            rollup::raw_part_sql(Agg::Avg),
            vec![&key, &DAY_MS, &day_end, &0i64, &bucket],
        ),
        (
            "series agg=last from the events",
            rollup::raw_part_sql(Agg::Last),
            vec![&key, &DAY_MS, &day_end, &0i64, &bucket],
        ),
    ];
    println!("\n== SQLite query plans (EXPLAIN QUERY PLAN on a read connection, {dev}) ==");
    for (what, sql, args) in items {
        println!("{what}:");
        for line in plan(&c, &sql, &args) {
            println!("    {line}");
        }
    }
}
