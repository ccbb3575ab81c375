//! Garbage on the device link: random bytes and truncated/corrupted frames between valid ones.
//!
//! The test plays a device over a real TCP connection: Hello, Welcome, then thousands of samples in
//! many `Samples` frames with junk between them, fed in random chunk sizes while acks are read.
//! Every sample's value encodes its seq, and every junk item derived from a frame is derived from a
//! *poisoned* copy of it (same seqs, impossible values), so a corrupt frame that slipped through
//! would show up as a wrong stored value. The expected rejections are an offline decode of the exact
//! byte stream sent; the agent's quarantine table and metrics must equal it, reason by reason and
//! (for the table) row by row.
//!
//! Two smaller tests check the `quarantine_max_rows` bound: newest rows kept while the metrics count
//! every rejection (also across a restart), and the bound after a rolled-back transaction.
//! One module: all three run the same scripted device and the same offline decode of its bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_agent::metrics::{Metrics, REASONS};
use ferry_agent::store::{open_reader, read};
use ferry_wire::{crc32, Decoder, Hello, Message, Sample, Samples, MAX_FRAME_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::common::{agent, frame, sensor_infos, TempDir};
use crate::poll::poll_until;

const DEVICE: &str = "garbage-dev";
const BOOT: u32 = 0x6A2B_17C5;
const TICK0: u64 = 10_000;
const TICKS_PER_SEQ: u64 = 100;
/// Samples the device may have sent beyond the last ack before it waits (its "ring").
const WINDOW: u32 = 256;

// ---------------------------------------------------------------------------------------------
// A small deterministic RNG (SplitMix64): seeded, reproducible, no dependency.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (the modulo bias is irrelevant here).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn nonzero(&mut self) -> u8 {
        self.range(1, 255) as u8
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn seed() -> u64 {
    std::env::var("FERRY_GARBAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00FE_4421_6A5B_0001)
}

// ---------------------------------------------------------------------------------------------
// Frames, written from PROTOCOL.md: 00 | COBS(version · message · crc32-le) | 00.

fn cobs_encode(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    let mut code_at = 0;
    for &b in body {
        if b == 0 {
            out[code_at] = (out.len() - code_at) as u8;
            code_at = out.len();
            out.push(0);
        } else {
            out.push(b);
            if out.len() - code_at == 0xFF {
                out[code_at] = 0xFF;
                code_at = out.len();
                out.push(0);
            }
        }
    }
    out[code_at] = (out.len() - code_at) as u8;
    out
}

fn cobs_decode(block: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < block.len() {
        let code = block[i] as usize;
        assert!(
            code != 0 && i + code <= block.len(),
            "test COBS input is valid"
        );
        out.extend_from_slice(&block[i + 1..i + code]);
        i += code;
        if code < 0xFF && i < block.len() {
            out.push(0);
        }
    }
    out
}

/// The body (version · message · CRC) of an encoded frame.
fn body_of(frame: &[u8]) -> Vec<u8> {
    assert!(frame[0] == 0 && frame[frame.len() - 1] == 0);
    cobs_decode(&frame[1..frame.len() - 1])
}

/// A complete frame around `body`, with its CRC recomputed first.
fn sealed(mut body: Vec<u8>) -> Vec<u8> {
    let n = body.len() - 4;
    let crc = crc32(&body[..n]);
    body[n..].copy_from_slice(&crc.to_le_bytes());
    let mut f = vec![0u8];
    f.extend(cobs_encode(&body));
    f.push(0);
    f
}

fn sample(seq: u32, poison: bool) -> Sample {
    Sample {
        ticks: TICK0 + u64::from(seq) * TICKS_PER_SEQ,
        sensor: (seq % 4) as u8,
        value: if poison {
            -1000.0 - seq as f32
        } else {
            value_of(seq)
        },
    }
}

/// The value stored for `seq` (exact in f32 for every seq used here).
fn value_of(seq: u32) -> f32 {
    seq as f32 + 0.25
}

fn samples_frame(first_seq: u32, n: u32, poison: bool) -> Vec<u8> {
    frame(&Message::Samples(Samples {
        oldest: first_seq,
        first_seq,
        samples: (first_seq..first_seq + n)
            .map(|s| sample(s, poison))
            .collect(),
    }))
}

fn hello_frame() -> Vec<u8> {
    let names = ["t0", "t1", "t2", "t3"];
    frame(&Message::Hello(Hello {
        device_id: DEVICE,
        firmware: "garbage-1",
        boot_id: BOOT,
        tick_hz: 1000,
        ticks: TICK0,
        next_seq: 0,
        sensors: sensor_infos(&names.map(|n| (n, "u"))),
    }))
}

// ---------------------------------------------------------------------------------------------
// Junk.

const KINDS: [&str; 10] = [
    "random",
    "random_with_zeros",
    "truncated_prefix",
    "truncated_suffix",
    "bit_flips",
    "over_long",
    "wrong_version",
    "padded_varint",
    "boundary_1024",
    "tiny",
];

/// Appends one junk item derived from `poison` (a complete frame with impossible values) and
/// returns its kind.
fn junk(rng: &mut Rng, poison: &[u8], out: &mut Vec<u8>) -> &'static str {
    let k = rng.range(0, KINDS.len() - 1);
    match k {
        0 => {
            let n = rng.range(1, 48);
            out.extend((0..n).map(|_| rng.nonzero()));
        }
        1 => {
            let n = rng.range(1, 64);
            out.extend((0..n).map(|_| if rng.percent(20) { 0 } else { rng.byte() }));
        }
        2 => {
            // A frame cut short (the device reset mid-frame): its opening delimiter, no closing one.
            let cut = rng.range(1, poison.len() - 2);
            out.extend_from_slice(&poison[..cut]);
        }
        3 => {
            // The end of a frame whose start was lost.
            let from = rng.range(2, poison.len() - 1);
            out.extend_from_slice(&poison[from..]);
        }
        4 => {
            let mut f = poison.to_vec();
            for _ in 0..rng.range(1, 3) {
                let at = rng.range(1, f.len() - 2);
                f[at] ^= 1 << rng.range(0, 7);
            }
            out.extend(f);
        }
        5 => {
            // More than the receiver's buffer before the next delimiter.
            let n = rng.range(MAX_FRAME_LEN + 1, 3 * MAX_FRAME_LEN);
            out.push(0);
            out.extend((0..n).map(|_| rng.nonzero()));
            out.push(0);
        }
        6 => {
            let mut body = body_of(poison);
            body[0] = match rng.range(0, 3) {
                0 => 0,
                1 => 2,
                2 => 0xFF,
                _ => loop {
                    let v = rng.byte();
                    if v != 1 {
                        break v;
                    }
                },
            };
            out.extend(sealed(body));
        }
        7 => {
            // One varint of the Samples header (oldest, first_seq or the sample count) in a
            // longer-than-necessary form; CRC recomputed, so only canonical-form checking rejects it.
            let mut body = body_of(poison);
            let mut at = 2; // after version and tag
            for _ in 0..rng.range(0, 2) {
                while body[at] & 0x80 != 0 {
                    at += 1;
                }
                at += 1;
            }
            while body[at] & 0x80 != 0 {
                at += 1;
            }
            body[at] |= 0x80;
            body.insert(at + 1, 0x00);
            out.extend(sealed(body));
        }
        8 => {
            // Exactly at and just over the receiver's limit, delimited exactly.
            let n = MAX_FRAME_LEN + rng.range(0, 1);
            out.push(0);
            out.extend((0..n).map(|_| rng.nonzero()));
            out.push(0);
        }
        _ => {
            // Valid COBS around the first 0..=5 bytes of a body: shorter than version, tag and CRC.
            let body = body_of(poison);
            out.push(0);
            out.extend(cobs_encode(&body[..rng.range(0, 5)]));
            out.push(0);
        }
    }
    KINDS[k]
}

/// What the device sends, in order.
struct Plan {
    /// Junk, then the Hello (sent before the handshake completes).
    hello_part: Vec<u8>,
    /// Samples frames with junk between them; ends with a valid frame.
    stream: Vec<u8>,
    /// `(end offset in stream, every seq below this is in a complete frame)` per valid frame.
    frame_ends: Vec<(usize, u32)>,
    /// The valid frames (Hello first), as encoded.
    valid: Vec<Vec<u8>>,
    /// Junk items by kind.
    kinds: HashMap<&'static str, usize>,
}

/// Appends `items` junk items derived from `from`. The gap starts after a delimiter and the next
/// valid frame's opening delimiter ends it, so it is decoded on its own: junk that happens to form a
/// valid frame (say a truncated prefix followed by the matching suffix) is drawn again, because a
/// valid frame is data, not junk.
fn gap(
    rng: &mut Rng,
    from: &[u8],
    items: usize,
    kinds: &mut HashMap<&'static str, usize>,
    out: &mut Vec<u8>,
) {
    loop {
        let mut bytes = Vec::new();
        let drawn: Vec<_> = (0..items).map(|_| junk(rng, from, &mut bytes)).collect();
        bytes.push(0);
        let mut dec: Box<Decoder> = Box::new(Decoder::new());
        let mut input = bytes.as_slice();
        let mut forms_frame = false;
        while let Some(r) = dec.feed(&mut input) {
            forms_frame |= r.is_ok();
        }
        if forms_frame {
            *kinds.entry("drawn_again").or_insert(0) += 1;
            continue;
        }
        bytes.pop();
        out.extend(bytes);
        for k in drawn {
            *kinds.entry(k).or_insert(0) += 1;
        }
        return;
    }
}

fn plan(rng: &mut Rng, total: u32) -> Plan {
    let mut kinds = HashMap::new();
    let mut hello_part = Vec::new();
    let hello = hello_frame();
    gap(rng, &hello, 3, &mut kinds, &mut hello_part);
    hello_part.extend_from_slice(&hello);
    let mut valid = vec![hello];
    let mut stream = Vec::new();
    let mut frame_ends = Vec::new();
    let mut seq = 0;
    while seq < total {
        let n = (rng.range(1, 32) as u32).min(total - seq);
        let good = samples_frame(seq, n, false);
        let poison = samples_frame(seq, n, true);
        let items = rng.range(0, 3);
        gap(rng, &poison, items, &mut kinds, &mut stream);
        stream.extend_from_slice(&good);
        seq += n;
        frame_ends.push((stream.len(), seq));
        valid.push(good);
    }
    Plan {
        hello_part,
        stream,
        frame_ends,
        valid,
        kinds,
    }
}

/// One rejection as the decoder reports it: reason label, raw bytes kept, run length.
type Rejection = (String, Vec<u8>, i64);

/// Decodes `bytes` with a fresh decoder: the valid frames (re-encoded) and the rejections, in order.
fn offline_decode(bytes: &[u8]) -> (Vec<Vec<u8>>, Vec<Rejection>) {
    let mut dec: Box<Decoder> = Box::new(Decoder::new());
    let mut input = bytes;
    let (mut ok, mut rejected) = (Vec::new(), Vec::new());
    while let Some(r) = dec.feed(&mut input) {
        match r {
            Ok(m) => ok.push(frame(&m)),
            Err(r) => rejected.push((r.reason.as_str().to_owned(), r.raw.to_vec(), r.len as i64)),
        }
    }
    assert_eq!(dec.pending(), 0, "the stream ends on a delimiter");
    (ok, rejected)
}

// ---------------------------------------------------------------------------------------------
// The device's receive side.

#[derive(Debug, Default, Clone)]
struct Heard {
    welcome_next: Option<u32>,
    acked: u32,
    acks: u64,
    /// Acks beyond the samples the device had handed to the socket at that moment.
    acks_beyond_sent: u64,
    acks_backwards: u64,
    acks_other_boot: u64,
    other: u64,
    rejected: u64,
}

fn spawn_reader(mut rd: OwnedReadHalf, sent: Arc<AtomicU32>) -> watch::Receiver<Heard> {
    let (tx, rx) = watch::channel(Heard::default());
    tokio::spawn(async move {
        let mut dec: Box<Decoder> = Box::new(Decoder::new());
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut input = &buf[..n];
            while let Some(r) = dec.feed(&mut input) {
                tx.send_modify(|h| match r {
                    Ok(Message::Welcome(w)) if w.boot_id == BOOT => {
                        h.welcome_next = Some(w.next_seq)
                    }
                    Ok(Message::Ack(a)) if a.boot_id == BOOT => {
                        h.acks += 1;
                        if a.next_seq > sent.load(SeqCst) {
                            h.acks_beyond_sent += 1;
                        }
                        if a.next_seq < h.acked {
                            h.acks_backwards += 1;
                        }
                        h.acked = h.acked.max(a.next_seq);
                    }
                    Ok(Message::Ack(_)) => h.acks_other_boot += 1,
                    Ok(_) => h.other += 1,
                    Err(_) => h.rejected += 1,
                });
            }
        }
    });
    rx
}

async fn wait_heard(
    rx: &mut watch::Receiver<Heard>,
    within: Duration,
    what: &str,
    cond: impl FnMut(&Heard) -> bool,
) {
    let r = tokio::time::timeout(within, rx.wait_for(cond))
        .await
        .map(|r| r.is_ok());
    match r {
        Ok(true) => {}
        Ok(false) => panic!("link closed while waiting for {what}: {:?}", *rx.borrow()),
        Err(_) => panic!("timed out waiting for {what}: {:?}", *rx.borrow()),
    }
}

/// Writes `bytes` in random chunk sizes (1 byte to a few KiB).
async fn write_chunked(wr: &mut tokio::net::tcp::OwnedWriteHalf, rng: &mut Rng, bytes: &[u8]) {
    let mut at = 0;
    while at < bytes.len() {
        let n = chunk_len(rng).min(bytes.len() - at);
        wr.write_all(&bytes[at..at + n]).await.unwrap();
        at += n;
    }
}

fn chunk_len(rng: &mut Rng) -> usize {
    match rng.range(0, 9) {
        0..=2 => rng.range(1, 8),
        3..=5 => rng.range(1, 100),
        6..=8 => rng.range(1, 1500),
        _ => rng.range(1, 4096),
    }
}

fn counts(rejections: &[Rejection]) -> HashMap<String, i64> {
    let mut c = HashMap::new();
    for (r, _, _) in rejections {
        *c.entry(r.clone()).or_insert(0) += 1;
    }
    c
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_between_frames_loses_nothing_stores_nothing_corrupt_and_quarantines_exactly() {
    const TOTAL: u32 = 10_000;
    let started = Instant::now();
    let seed = seed();
    let mut rng = Rng(seed);
    let p = plan(&mut rng, TOTAL);

    // Expected, independently of the agent: an offline decode of exactly the bytes sent.
    let all: Vec<u8> = [p.hello_part.as_slice(), p.stream.as_slice()].concat();
    let (ok, expected) = offline_decode(&all);
    assert_eq!(
        ok, p.valid,
        "seed {seed}: junk never hides a valid frame nor forms one"
    );
    let want = counts(&expected);
    for r in REASONS {
        assert!(
            want.get(r).copied().unwrap_or(0) > 0,
            "seed {seed}: the stream exercises {r}: {want:?}"
        );
    }

    let dir = TempDir::new("garbage");
    let db = dir.path().join("ferry.db");
    let agent = agent(&db, "").await;
    let sock = TcpStream::connect(agent.tcp_addr.unwrap()).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let (rd, mut wr) = sock.into_split();
    let sent = Arc::new(AtomicU32::new(0));
    let mut heard = spawn_reader(rd, sent.clone());

    // Handshake (with junk before the Hello).
    write_chunked(&mut wr, &mut rng, &p.hello_part).await;
    wait_heard(&mut heard, Duration::from_secs(10), "Welcome", |h| {
        h.welcome_next.is_some()
    })
    .await;
    assert_eq!(
        heard.borrow().welcome_next,
        Some(0),
        "a new boot starts at 0"
    );

    // The stream, in random chunks, never more than WINDOW samples beyond the last ack.
    let mut at = 0;
    let mut ends = p.frame_ends.iter().peekable();
    let mut upto = 0;
    let mut waits = 0;
    while at < p.stream.len() {
        let n = chunk_len(&mut rng).min(p.stream.len() - at);
        while let Some(&&(end, complete)) = ends.peek() {
            if end > at + n {
                break;
            }
            upto = complete;
            ends.next();
        }
        // Only what earlier chunks completed can be acked.
        let need = upto.saturating_sub(WINDOW).min(sent.load(SeqCst));
        if heard.borrow().acked < need {
            waits += 1;
        }
        wait_heard(
            &mut heard,
            Duration::from_secs(30),
            "acks to open the window",
            |h| h.acked >= need,
        )
        .await;
        // Published before the bytes leave, so an ack can never legitimately exceed it.
        sent.store(upto, SeqCst);
        wr.write_all(&p.stream[at..at + n]).await.unwrap();
        at += n;
    }
    assert_eq!(upto, TOTAL);
    wait_heard(&mut heard, Duration::from_secs(60), "the final ack", |h| {
        h.acked == TOTAL
    })
    .await;
    let sent_in = started.elapsed();
    agent.store.sync().await.unwrap();

    // Acks: only after data, never backwards, never for another boot; nothing else came back.
    let h = heard.borrow().clone();
    assert_eq!(h.acks_beyond_sent, 0, "{h:?}");
    assert_eq!(h.acks_backwards, 0, "{h:?}");
    assert_eq!(h.acks_other_boot, 0, "{h:?}");
    assert_eq!(h.other, 0, "no HelloRequest or other message: {h:?}");
    assert_eq!(h.rejected, 0, "the agent's own frames are valid: {h:?}");

    // Every valid sample stored exactly once, in order, with its value; nothing else stored.
    let conn = open_reader(&db).unwrap();
    let keys = read::event_keys(&conn, DEVICE).unwrap();
    let want_keys: Vec<(u32, u32)> = (0..TOTAL).map(|s| (BOOT, s)).collect();
    assert!(
        keys == want_keys,
        "stored keys are exactly (boot, 0..{TOTAL}) in order"
    );
    assert_eq!(read::event_count(&conn).unwrap(), i64::from(TOTAL));
    let mut st = conn
        .prepare("SELECT seq, sensor, ts_ms, value FROM events ORDER BY id")
        .unwrap();
    let rows: Vec<(u32, u8, i64, f64)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let ts0 = rows[0].2;
    for (i, &(seq, sensor, ts, value)) in rows.iter().enumerate() {
        assert_eq!(seq, i as u32);
        assert_eq!(value, f64::from(value_of(seq)), "seq {seq}: stored value");
        assert_eq!(sensor, (seq % 4) as u8, "seq {seq}: sensor");
        assert_eq!(
            ts - ts0,
            i64::from(seq) * TICKS_PER_SEQ as i64,
            "seq {seq}: time"
        );
    }

    // Quarantine: per reason, and row by row, what the offline decode found.
    let got = read::quarantine_counts(&conn).unwrap();
    let m = &agent.metrics;
    for (i, r) in REASONS.iter().enumerate() {
        let w = want.get(*r).copied().unwrap_or(0);
        assert_eq!(got.get(*r).copied().unwrap_or(0), w, "quarantine rows, {r}");
        assert_eq!(
            Metrics::get(&m.frames_rejected[i]) as i64,
            w,
            "frames_rejected[{r}]"
        );
    }
    assert_eq!(got.values().sum::<i64>(), expected.len() as i64);
    let mut st = conn
        .prepare("SELECT reason, raw, len, link FROM quarantine ORDER BY id")
        .unwrap();
    let rows: Vec<(Rejection, String)> = st
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), expected.len());
    for (i, ((got, link), want)) in rows.iter().zip(&expected).enumerate() {
        assert!(
            !got.1.is_empty() && got.2 >= got.1.len() as i64,
            "row {i}: raw kept, len covers it"
        );
        assert!(link.starts_with("tcp:"), "row {i}: link {link}");
        assert!(got == want, "row {i}: {got:?} != expected {want:?}");
    }
    assert_eq!(Metrics::get(&m.quarantined), expected.len() as u64);
    assert_eq!(Metrics::get(&m.frames_ok), p.valid.len() as u64);
    assert_eq!(Metrics::get(&m.frames_unexpected), 0);
    assert_eq!(Metrics::get(&m.samples_committed), u64::from(TOTAL));
    assert_eq!(Metrics::get(&m.samples_received), u64::from(TOTAL));
    assert_eq!(Metrics::get(&m.samples_duplicate), 0);
    assert_eq!(Metrics::get(&m.samples_out_of_order), 0);
    assert_eq!(Metrics::get(&m.commit_failures), 0);

    let mut kinds: Vec<_> = p.kinds.iter().collect();
    kinds.sort();
    let mut reasons: Vec<_> = want.iter().collect();
    reasons.sort();
    eprintln!(
        "garbage: seed {seed}, {TOTAL} samples in {} frames, {} bytes, {} junk items {kinds:?}, \
         rejections {reasons:?}, {} acks, {waits} waits for acks; sent and acked in {sent_in:?}, total {:?}",
        p.valid.len() - 1,
        all.len(),
        p.kinds
            .iter()
            .filter(|(k, _)| **k != "drawn_again")
            .map(|(_, n)| n)
            .sum::<usize>(),
        h.acks,
        started.elapsed()
    );
    drop(wr);
    agent.stop().await.unwrap();
}

/// A run the decoder rejects, unique per `i`: bad COBS (ASCII) or a bad CRC (valid COBS).
fn numbered_junk(i: usize) -> Vec<u8> {
    if i % 2 == 0 {
        format!("junk-{i:04}").into_bytes()
    } else {
        let body = [
            0x01,
            0x01,
            (i / 255 + 1) as u8,
            (i % 255 + 1) as u8,
            0xde,
            0xad,
            0xbe,
            0xef,
        ];
        cobs_encode(&body)
    }
}

async fn send_numbered(addr: std::net::SocketAddr, rng: &mut Rng, range: std::ops::Range<usize>) {
    let mut bytes = Vec::new();
    for i in range {
        bytes.push(0);
        bytes.extend(numbered_junk(i));
        bytes.push(0);
    }
    let sock = TcpStream::connect(addr).await.unwrap();
    let (_rd, mut wr) = sock.into_split();
    write_chunked(&mut wr, rng, &bytes).await;
    wr.shutdown().await.unwrap();
}

fn quarantine_raws(db: &std::path::Path) -> Vec<Vec<u8>> {
    let conn = open_reader(db).unwrap();
    let mut st = conn
        .prepare("SELECT raw FROM quarantine ORDER BY id")
        .unwrap();
    let rows = st.query_map([], |r| r.get(0)).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_table_keeps_the_newest_max_rows_and_metrics_count_all() {
    let started = Instant::now();
    let mut rng = Rng(seed() ^ 0x5151);
    let dir = TempDir::new("garbage-bound");
    let db = dir.path().join("ferry.db");
    let extra = "quarantine_max_rows = 50";

    let a = agent(&db, extra).await;
    send_numbered(a.tcp_addr.unwrap(), &mut rng, 0..200).await;
    let m = a.metrics.clone();
    poll_until(
        Duration::from_secs(20),
        "200 rejections counted",
        async || m.rejected_total() == 200,
    )
    .await;
    a.store.sync().await.unwrap();
    assert_eq!(Metrics::get(&m.frames_rejected[reason("bad_cobs")]), 100);
    assert_eq!(Metrics::get(&m.frames_rejected[reason("bad_crc")]), 100);
    assert_eq!(
        Metrics::get(&m.quarantined),
        200,
        "every rejection was written"
    );
    let want: Vec<Vec<u8>> = (150..200).map(numbered_junk).collect();
    assert!(
        quarantine_raws(&db) == want,
        "the table holds the newest 50 rows, in order"
    );
    let counts = read::quarantine_counts(&open_reader(&db).unwrap()).unwrap();
    assert_eq!(counts.get("bad_cobs"), Some(&25));
    assert_eq!(counts.get("bad_crc"), Some(&25));
    a.stop().await.unwrap();

    // The bound holds across a restart (the writer recounts the table at start).
    let a = agent(&db, extra).await;
    send_numbered(a.tcp_addr.unwrap(), &mut rng, 200..210).await;
    let m = a.metrics.clone();
    poll_until(
        Duration::from_secs(20),
        "10 more rejections counted",
        async || m.rejected_total() == 10,
    )
    .await;
    a.store.sync().await.unwrap();
    let want: Vec<Vec<u8>> = (160..210).map(numbered_junk).collect();
    assert!(
        quarantine_raws(&db) == want,
        "still the newest 50 after a restart"
    );
    a.stop().await.unwrap();
    eprintln!("garbage bound: {:?}", started.elapsed());
}

/// A rolled-back transaction takes its quarantine inserts and deletions with it; afterwards the
/// bound must still keep exactly the newest `quarantine_max_rows` rows (not fewer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_bound_survives_a_rolled_back_transaction() {
    let mut rng = Rng(seed() ^ 0xFA11);
    let dir = TempDir::new("garbage-rollback");
    let db = dir.path().join("ferry.db");
    let a = agent(&db, "quarantine_max_rows = 50").await;
    let addr = a.tcp_addr.unwrap();
    let m = a.metrics.clone();
    send_numbered(addr, &mut rng, 0..50).await;
    poll_until(
        Duration::from_secs(20),
        "50 rejections counted",
        async || m.rejected_total() == 50,
    )
    .await;
    a.store.sync().await.unwrap();
    assert_eq!(quarantine_raws(&db).len(), 50);

    // Fault injection: deleting from the quarantine table fails (as a full disk or an I/O error
    // would), so the 51st rejection's transaction, which must trim the table, is rolled back.
    let rw = rusqlite::Connection::open(&db).unwrap();
    rw.busy_timeout(Duration::from_secs(5)).unwrap();
    rw.execute_batch(
        "CREATE TRIGGER test_fail_trim BEFORE DELETE ON quarantine
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .unwrap();
    send_numbered(addr, &mut rng, 50..51).await;
    poll_until(
        Duration::from_secs(20),
        "the failed transaction",
        async || Metrics::get(&m.commit_failures) == 1,
    )
    .await;
    assert_eq!(m.rejected_total(), 51);
    let _ = a.store.sync().await;
    let want: Vec<Vec<u8>> = (0..50).map(numbered_junk).collect();
    assert!(
        quarantine_raws(&db) == want,
        "the rolled-back row is gone, nothing else changed"
    );

    rw.execute_batch("DROP TRIGGER test_fail_trim").unwrap();
    send_numbered(addr, &mut rng, 51..60).await;
    poll_until(
        Duration::from_secs(20),
        "60 rejections counted",
        async || m.rejected_total() == 60,
    )
    .await;
    a.store.sync().await.unwrap();
    let want: Vec<Vec<u8>> = (0..50).chain(51..60).skip(9).map(numbered_junk).collect();
    let got = quarantine_raws(&db);
    assert_eq!(
        got.len(),
        50,
        "the table is full again, not short by the rolled-back rows"
    );
    assert!(got == want, "the newest 50 rows, in order");
    assert_eq!(Metrics::get(&m.quarantined), 59, "committed rows only");
    a.stop().await.unwrap();
}

fn reason(label: &str) -> usize {
    REASONS.iter().position(|r| *r == label).unwrap()
}
