//! Owned mirrors of every message type, with proptest strategies (messages borrow, so tests hold the
//! owned data and borrow a `Message` from it).
use ferry_wire::*;
use proptest::collection::vec;
use proptest::prelude::*;

#[derive(Debug, Clone)]
pub enum Owned {
    Hello {
        id: String,
        fw: String,
        boot: u32,
        hz: u32,
        ticks: u64,
        next: u32,
        sensors: Vec<(u8, String, String, u32)>,
    },
    Samples {
        oldest_back: u32,
        first: u32,
        samples: Vec<(u64, u8, f32)>,
    },
    Heartbeat(Heartbeat),
    Result {
        id: u32,
        status: CommandStatus,
        data: Vec<u8>,
    },
    Welcome(Welcome),
    Ack(Ack),
    Command {
        id: u32,
        kind: OwnedKind,
    },
    HelloRequest,
}

#[derive(Debug, Clone)]
pub enum OwnedKind {
    SetInterval(u8, u32),
    Identify(u32),
    Reboot,
    Opaque(Vec<u8>),
}

impl Owned {
    pub fn message(&self) -> Message<'_> {
        match self {
            Owned::Hello {
                id,
                fw,
                boot,
                hz,
                ticks,
                next,
                sensors,
            } => Message::Hello(Hello {
                device_id: id,
                firmware: fw,
                boot_id: *boot,
                tick_hz: *hz,
                ticks: *ticks,
                next_seq: *next,
                sensors: sensors
                    .iter()
                    .map(|(i, n, u, ms)| SensorInfo {
                        index: *i,
                        name: n,
                        unit: u,
                        interval_ms: *ms,
                    })
                    .collect(),
            }),
            Owned::Samples {
                oldest_back,
                first,
                samples,
            } => Message::Samples(Samples {
                oldest: first.saturating_sub(*oldest_back),
                first_seq: *first,
                samples: samples
                    .iter()
                    .map(|&(ticks, sensor, value)| Sample {
                        ticks,
                        sensor,
                        value,
                    })
                    .collect(),
            }),
            Owned::Heartbeat(h) => Message::Heartbeat(*h),
            Owned::Result { id, status, data } => Message::CommandResult(CommandResult {
                id: *id,
                status: *status,
                data,
            }),
            Owned::Welcome(w) => Message::Welcome(*w),
            Owned::Ack(a) => Message::Ack(*a),
            Owned::Command { id, kind } => Message::Command(Command {
                id: *id,
                kind: match kind {
                    OwnedKind::SetInterval(sensor, interval_ms) => CommandKind::SetInterval {
                        sensor: *sensor,
                        interval_ms: *interval_ms,
                    },
                    OwnedKind::Identify(d) => CommandKind::Identify { duration_ms: *d },
                    OwnedKind::Reboot => CommandKind::Reboot,
                    OwnedKind::Opaque(b) => CommandKind::Opaque(b),
                },
            }),
            Owned::HelloRequest => Message::HelloRequest,
        }
    }
}

fn text(max: usize) -> impl Strategy<Value = String> {
    // Any Unicode scalar but U+0000 (never valid in a name), trimmed to the byte limit on a char
    // boundary.
    any::<String>().prop_map(move |s| {
        let s = s.replace('\0', "");
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    })
}

pub fn status() -> impl Strategy<Value = CommandStatus> {
    prop_oneof![
        Just(CommandStatus::Ok),
        Just(CommandStatus::UnknownSensor),
        Just(CommandStatus::InvalidArgument),
        Just(CommandStatus::Unsupported),
        Just(CommandStatus::Failed),
    ]
}

pub fn owned() -> impl Strategy<Value = Owned> {
    let hello = (
        text(MAX_DEVICE_ID_LEN).prop_filter("non-empty id", |s| !s.is_empty()),
        text(MAX_FIRMWARE_LEN),
        any::<u32>(),
        1..=u32::MAX,
        any::<u64>(),
        any::<u32>(),
        vec(
            (text(MAX_SENSOR_NAME_LEN), text(MAX_UNIT_LEN), any::<u32>()),
            0..=MAX_SENSORS,
        ),
    )
        .prop_map(|(id, fw, boot, hz, ticks, next, s)| Owned::Hello {
            id,
            fw,
            boot,
            hz,
            ticks,
            next,
            // indexes must be unique: derive them from the position, scrambled
            sensors: s
                .into_iter()
                .enumerate()
                .map(|(i, (n, u, ms))| ((i as u8).wrapping_mul(37), n, u, ms))
                .collect(),
        });
    let samples = (
        any::<u32>(),
        0..u32::MAX - MAX_SAMPLES_PER_FRAME as u32,
        vec(
            (any::<u64>(), any::<u8>(), any::<f32>()),
            1..=MAX_SAMPLES_PER_FRAME,
        ),
    )
        .prop_map(|(oldest_back, first, samples)| Owned::Samples {
            oldest_back,
            first,
            samples,
        });
    let heartbeat = (any::<u64>(), any::<u32>(), any::<u16>(), any::<u32>()).prop_map(
        |(ticks, dropped, ring_depth, read_errors)| {
            Owned::Heartbeat(Heartbeat {
                ticks,
                dropped,
                ring_depth,
                read_errors,
            })
        },
    );
    let result = (any::<u32>(), status(), vec(any::<u8>(), 0..=MAX_OPAQUE_LEN))
        .prop_map(|(id, status, data)| Owned::Result { id, status, data });
    let welcome =
        (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(boot_id, utc_ms, next_seq)| {
            Owned::Welcome(Welcome {
                boot_id,
                utc_ms,
                next_seq,
            })
        });
    let ack = (any::<u32>(), any::<u32>())
        .prop_map(|(boot_id, next_seq)| Owned::Ack(Ack { boot_id, next_seq }));
    let kind = prop_oneof![
        (any::<u8>(), any::<u32>()).prop_map(|(s, i)| OwnedKind::SetInterval(s, i)),
        any::<u32>().prop_map(OwnedKind::Identify),
        Just(OwnedKind::Reboot),
        vec(any::<u8>(), 0..=MAX_OPAQUE_LEN).prop_map(OwnedKind::Opaque),
    ];
    let command = (any::<u32>(), kind).prop_map(|(id, kind)| Owned::Command { id, kind });
    prop_oneof![
        hello,
        samples,
        heartbeat,
        result,
        welcome,
        ack,
        command,
        Just(Owned::HelloRequest)
    ]
}

/// Encodes a message into a fresh buffer.
pub fn frame(m: &Message<'_>) -> Vec<u8> {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    let n = encode(m, &mut buf).expect("valid message encodes");
    buf[..n].to_vec()
}

/// Bit-exact comparison (f32 NaN payloads included), via the canonical encoding.
pub fn same(a: &Message<'_>, b: &Message<'_>) -> bool {
    let mut x = [0u8; MAX_BODY_LEN];
    let mut y = [0u8; MAX_BODY_LEN];
    postcard::to_slice(a, &mut x).unwrap() == postcard::to_slice(b, &mut y).unwrap()
}
