use super::*;

fn req(since: &str, until: Option<&str>, device: Option<&str>) -> ReplayRequest {
    ReplayRequest {
        since: InstantArg::Text(since.into()),
        until: until.map(|u| InstantArg::Text(u.into())),
        device: device.map(str::to_owned),
    }
}

const NOW: i64 = 1_800_000_000_000;

#[test]
fn ranges_resolve_against_now_and_name_the_bad_field() {
    let s = ReplaySpec::resolve(&req("-1h", None, None), NOW).unwrap();
    assert_eq!((s.since_ms, s.until_ms), (NOW - 3_600_000, NOW));
    let s = ReplaySpec::resolve(
        &ReplayRequest {
            since: InstantArg::Ms(1000),
            until: Some(InstantArg::Text("2000".into())),
            device: Some("pump-1".into()),
        },
        NOW,
    )
    .unwrap();
    assert_eq!((s.since_ms, s.until_ms), (1000, 2000));
    assert_eq!(s.device.as_deref(), Some("pump-1"));
    let e = ReplaySpec::resolve(&req("yesterday", None, None), NOW).unwrap_err();
    assert!(e.starts_with("since: "), "{e}");
    let e = ReplaySpec::resolve(&req("-1h", Some("-2h"), None), NOW).unwrap_err();
    assert!(
        e.starts_with("until: ") && e.contains("not after since"),
        "{e}"
    );
    let e = ReplaySpec::resolve(&req("-1h", Some("-1h"), None), NOW).unwrap_err();
    assert!(e.contains("not after since"), "an empty range: {e}");
    let e = ReplaySpec::resolve(&req("-1h", None, Some("")), NOW).unwrap_err();
    assert_eq!(e, "device: is empty");
    let long = "d".repeat(300);
    let e = ReplaySpec::resolve(&req("-1h", None, Some(&long)), NOW).unwrap_err();
    assert!(e.starts_with("device: "), "{e}");
}

#[test]
fn requests_take_text_or_milliseconds_and_refuse_unknown_fields() {
    let r: ReplayRequest =
        serde_json::from_str(r#"{"since":1000,"until":"2026-12-07T00:00:00Z"}"#).unwrap();
    assert!(matches!(r.since, InstantArg::Ms(1000)));
    let e = serde_json::from_str::<ReplayRequest>(r#"{"since":"-1h","from":"x"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `from`"), "{e}");
    assert!(serde_json::from_str::<ReplayRequest>(r#"{"until":"now"}"#).is_err());
}

#[test]
fn one_replay_runs_at_a_time_and_the_newest_are_kept() {
    let spec = ReplaySpec {
        since_ms: 0,
        until_ms: 10,
        device: None,
    };
    let mut b = Book::default();
    let v = b.begin(&spec, 5, NOW);
    assert_eq!(
        (v.id, v.state, v.events_total),
        (1, ReplayState::Running, 5)
    );
    assert_eq!(b.running(), Some(1));
    b.get_mut(1).unwrap().events_acked = 5;
    b.end(1, Ended::Done, NOW + 1);
    b.end(1, Ended::Failed("late".into()), NOW + 2);
    assert_eq!(
        b.get(1).unwrap().state,
        ReplayState::Done,
        "an ended replay stays so"
    );
    assert_eq!(b.running(), None);
    assert_eq!(b.get(1).unwrap().state, ReplayState::Done);
    b.begin(&spec, 0, NOW);
    b.end(2, Ended::Failed("broker refused".into()), NOW);
    let v = b.get(2).unwrap();
    assert_eq!(
        (v.state, v.error.as_deref()),
        (ReplayState::Failed, Some("broker refused"))
    );
    for _ in 0..KEEP {
        let id = b.begin(&spec, 0, NOW).id;
        b.end(id, Ended::Cancelled("by a request".into()), NOW);
    }
    let all = b.list();
    assert_eq!(all.len(), KEEP);
    assert_eq!(all[0].id, 2 + KEEP as u64, "newest first");
    assert!(b.get(1).is_none(), "the oldest are dropped");
}

#[test]
fn the_window_holds_at_most_window_messages_and_half_the_uplinks_oldest_first() {
    let mut w: Window<u32> = Window::new(100);
    for i in 0..WINDOW as u32 {
        assert!(w.has_room());
        w.sent(i, u64::from(i));
    }
    assert!(!w.has_room());
    assert_eq!(w.oldest(), Some((0, 0)));
    assert!(w.has_room());
    while w.oldest_pending() {
        w.oldest();
    }
    assert_eq!(w.oldest(), None);
    for (uplink, limit) in [(2, 1), (3, 1), (6, 3), (16, 8), (65_535, 8)] {
        let mut w: Window<()> = Window::new(uplink);
        let mut n = 0;
        while w.has_room() {
            w.sent((), 1);
            n += 1;
        }
        assert_eq!(n, limit, "uplink window {uplink}");
    }
}

/// Pages of 7 over rows whose timestamps repeat (two sensors share each) and run backwards
/// in places: every row in the range, below the id ceiling, read once.
#[test]
fn paging_reads_every_row_of_the_range_once_across_equal_timestamps() {
    let c = Connection::open_in_memory().unwrap();
    c.execute_batch(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, device INTEGER NOT NULL,
             boot_no INTEGER NOT NULL, seq INTEGER NOT NULL, sensor INTEGER NOT NULL,
             ts_ms INTEGER NOT NULL, value REAL);
         CREATE INDEX events_device_ts ON events (device, ts_ms);",
    )
    .unwrap();
    let mut id = 0;
    for seq in 0..100i64 {
        // A clock that jumps back by 30 ms at seq 50.
        let ts = 1_000 + 10 * seq - if seq >= 50 { 300 } else { 0 };
        for (device, sensor) in [(1, 0), (1, 1), (2, 0)] {
            id += 1;
            c.execute(
                "INSERT INTO events VALUES (?1, ?2, 1, ?3, ?4, ?5, 0.5)",
                params![id, device, seq, sensor, ts],
            )
            .unwrap();
        }
    }
    let (since, until, upto) = (1_100, 1_900, id - 3);
    let mut read = Vec::new();
    let mut after = (since, 0);
    loop {
        let rows = page(&c, 1, after, (until, upto), 7).unwrap();
        let Some(last) = rows.last() else { break };
        after = (last.5, last.0);
        let full = rows.len() == 7;
        read.extend(rows.iter().map(|r| r.0));
        if !full {
            break;
        }
    }
    let mut want: Vec<i64> = c
        .prepare(
            "SELECT id FROM events WHERE device = 1 AND ts_ms >= ?1 AND ts_ms < ?2 AND id <= ?3",
        )
        .unwrap()
        .query_map(params![since, until, upto], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut got = read.clone();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), read.len(), "no row twice");
    want.sort_unstable();
    assert_eq!(got, want, "every row of the range");
    assert!(want.len() > 100, "{}", want.len());
}
