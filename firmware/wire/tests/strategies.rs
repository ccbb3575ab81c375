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
    UpdateStatus(UpdateStatus),
    UpdateBegin {
        id: u32,
        slot: u8,
        length: u32,
        version: String,
        board: String,
        sha256: Vec<u8>,
        signature: Vec<u8>,
        force: bool,
    },
    UpdateChunk {
        id: u32,
        offset: u32,
        data: Vec<u8>,
    },
    UpdateCommit(u32),
    UpdateAbort(u32),
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
            Owned::UpdateStatus(s) => Message::UpdateStatus(*s),
            Owned::UpdateBegin {
                id,
                slot,
                length,
                version,
                board,
                sha256,
                signature,
                force,
            } => Message::UpdateBegin(UpdateBegin {
                id: *id,
                slot: *slot,
                length: *length,
                version,
                board,
                sha256,
                signature,
                force: *force,
            }),
            Owned::UpdateChunk { id, offset, data } => Message::UpdateChunk(UpdateChunk {
                id: *id,
                offset: *offset,
                data,
            }),
            Owned::UpdateCommit(id) => Message::UpdateCommit(UpdateCommit { id: *id }),
            Owned::UpdateAbort(id) => Message::UpdateAbort(UpdateAbort { id: *id }),
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
        8 => plain(hello, samples, heartbeat, result, welcome, ack, command),
        2 => update(),
    ]
}

/// The messages of sections 2 to 6 (also what a device without an updater sends and takes).
#[allow(clippy::too_many_arguments)]
fn plain(
    hello: impl Strategy<Value = Owned> + 'static,
    samples: impl Strategy<Value = Owned> + 'static,
    heartbeat: impl Strategy<Value = Owned> + 'static,
    result: impl Strategy<Value = Owned> + 'static,
    welcome: impl Strategy<Value = Owned> + 'static,
    ack: impl Strategy<Value = Owned> + 'static,
    command: impl Strategy<Value = Owned> + 'static,
) -> impl Strategy<Value = Owned> {
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

pub fn update_state() -> impl Strategy<Value = UpdateState> {
    prop_oneof![
        Just(UpdateState::Receiving),
        Just(UpdateState::Rebooting),
        Just(UpdateState::Trial),
        Just(UpdateState::Done),
        Just(UpdateState::Failed),
    ]
}

pub fn update_error() -> impl Strategy<Value = UpdateError> {
    (0u8..14).prop_map(|i| {
        [
            UpdateError::None,
            UpdateError::Busy,
            UpdateError::BadSlot,
            UpdateError::TooBig,
            UpdateError::WrongBoard,
            UpdateError::NotNewer,
            UpdateError::BadVersion,
            UpdateError::BadHash,
            UpdateError::BadSignature,
            UpdateError::Flash,
            UpdateError::RolledBack,
            UpdateError::Aborted,
            UpdateError::UnknownId,
            UpdateError::Incomplete,
        ][usize::from(i)]
    })
}

/// Valid firmware update messages (section 9).
pub fn update() -> impl Strategy<Value = Owned> {
    use ferry_wire::update::{
        CHUNK_ALIGN, MAX_BOARD_LEN, MAX_VERSION_LEN, SHA256_LEN, SIGNATURE_LEN,
    };
    let status = (
        prop_oneof![Just((0, UpdateState::Idle)), (1..=u32::MAX, update_state())],
        any::<u32>(),
        update_error(),
        1..=(MAX_CHUNK_LEN / CHUNK_ALIGN) as u16,
        any::<u16>(),
    )
        .prop_map(|((id, state), offset, error, chunks, extra)| {
            let max_chunk = chunks * CHUNK_ALIGN as u16;
            Owned::UpdateStatus(UpdateStatus {
                id,
                state,
                offset,
                error,
                max_chunk,
                window: max_chunk.saturating_add(extra),
            })
        });
    let begin = (
        (1..=u32::MAX, any::<u8>(), 1..=u32::MAX, any::<bool>()),
        text(MAX_VERSION_LEN).prop_filter("non-empty", |s| !s.is_empty()),
        text(MAX_BOARD_LEN).prop_filter("non-empty", |s| !s.is_empty()),
        vec(any::<u8>(), SHA256_LEN),
        vec(any::<u8>(), SIGNATURE_LEN),
    )
        .prop_map(
            |((id, slot, length, force), version, board, sha256, signature)| Owned::UpdateBegin {
                id,
                slot,
                length,
                version,
                board,
                sha256,
                signature,
                force,
            },
        );
    let chunk = (
        1..=u32::MAX,
        0..=u32::MAX - MAX_CHUNK_LEN as u32,
        vec(any::<u8>(), 1..=MAX_CHUNK_LEN),
    )
        .prop_map(|(id, offset, data)| Owned::UpdateChunk { id, offset, data });
    prop_oneof![
        status,
        begin,
        chunk,
        (1..=u32::MAX).prop_map(Owned::UpdateCommit),
        (1..=u32::MAX).prop_map(Owned::UpdateAbort),
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
