use proptest::prelude::*;

use super::*;

/// A backing file as bytes, and the closure `Pending` reads it through.
fn reader(disk: &[u8]) -> impl FnMut(u64, &mut [u8]) -> io::Result<()> + '_ {
    move |off, buf| {
        buf.fill(0);
        let off = off as usize;
        if off < disk.len() {
            let n = buf.len().min(disk.len() - off);
            buf[..n].copy_from_slice(&disk[off..off + n]);
        }
        Ok(())
    }
}

/// Applies a flush to a backing file held as bytes.
fn apply(disk: &mut Vec<u8>, f: &Flush) {
    if let Some(t) = f.truncate {
        disk.truncate(t as usize);
    }
    for (off, data) in &f.writes {
        let end = *off as usize + data.len();
        if disk.len() < end {
            disk.resize(end, 0);
        }
        disk[*off as usize..end].copy_from_slice(data);
    }
    disk.resize(f.size as usize, 0);
}

fn write(p: &mut Pending, disk: &[u8], off: u64, data: &[u8]) {
    p.write(off, data, &mut reader(disk)).unwrap();
}

fn read_all(p: &Pending, disk: &[u8]) -> Vec<u8> {
    p.read(0, p.size() as usize, &mut reader(disk)).unwrap()
}

#[test]
fn readers_see_unsynced_writes_over_the_backing_file() {
    let disk = vec![1u8; 1000];
    let mut p = Pending::new(1000);
    write(&mut p, &disk, 510, &[7, 7, 7, 7]);
    write(&mut p, &disk, 1200, &[9]);
    let seen = read_all(&p, &disk);
    assert_eq!(seen.len(), 1201);
    assert_eq!(&seen[508..516], &[1, 1, 7, 7, 7, 7, 1, 1]);
    assert!(
        seen[1000..1200].iter().all(|&b| b == 0),
        "a hole reads as zeros"
    );
    assert_eq!(seen[1200], 9);
    assert!(p.is_dirty());
    assert_eq!(p.held_bytes(), 3 * SECTOR, "sectors 0, 1 and 2 are held");
}

#[test]
fn a_sync_writes_everything_and_leaves_nothing_pending() {
    let mut disk = vec![1u8; 1000];
    let mut p = Pending::new(1000);
    write(&mut p, &disk, 510, &[7, 7, 7, 7]);
    p.set_size(600);
    let visible = read_all(&p, &disk);
    let f = p.sync();
    apply(&mut disk, &f);
    assert_eq!(disk, visible);
    assert!(!p.is_dirty());
    assert_eq!(read_all(&p, &disk), visible);
}

#[test]
fn a_cut_that_keeps_nothing_leaves_the_last_sync() {
    let mut disk = vec![1u8; 1000];
    let before = disk.clone();
    let mut p = Pending::new(1000);
    write(&mut p, &disk, 0, &[5; 3000]);
    p.set_size(100);
    let choice = CutChoice {
        block: SECTOR,
        keep_size: false,
    };
    let f = p.cut(choice, |_| false);
    apply(&mut disk, &f);
    assert_eq!(disk, before, "size, truncate and data all lost");
    assert!(!p.is_dirty());
}

#[test]
fn a_file_written_without_sync_is_gone_after_a_cut_that_drops_its_size() {
    let mut disk = Vec::new();
    let mut p = Pending::new(0);
    write(&mut p, &disk, 0, b"never synced");
    let choice = CutChoice {
        block: 4096,
        keep_size: false,
    };
    apply(&mut disk, &p.cut(choice, |_| true));
    assert!(disk.is_empty());
}

#[test]
fn a_kept_size_without_its_data_reads_as_zeros() {
    let mut disk = vec![1u8; 512];
    let mut p = Pending::new(512);
    write(&mut p, &disk, 512, &[5; 512]);
    let choice = CutChoice {
        block: SECTOR,
        keep_size: true,
    };
    apply(&mut disk, &p.cut(choice, |_| false));
    assert_eq!(disk.len(), 1024);
    assert!(disk[512..].iter().all(|&b| b == 0));
}

#[test]
fn sectors_of_one_block_share_their_fate() {
    let mut disk = vec![0u8; 16384];
    let mut p = Pending::new(16384);
    write(&mut p, &disk, 0, &[3; 16384]);
    let mut asked = Vec::new();
    let choice = CutChoice {
        block: 4096,
        keep_size: true,
    };
    let f = p.cut(choice, |b| {
        asked.push(b);
        b % 2 == 0
    });
    assert_eq!(asked, [0, 1, 2, 3], "one decision per 4 KiB block");
    apply(&mut disk, &f);
    for (i, chunk) in disk.chunks(4096).enumerate() {
        let want = if i % 2 == 0 { 3 } else { 0 };
        assert!(chunk.iter().all(|&b| b == want), "block {i}");
    }
}

#[test]
fn truncate_then_grow_reads_zeros_where_old_content_was() {
    let disk = vec![1u8; 2000];
    let mut p = Pending::new(2000);
    p.set_size(700);
    p.set_size(1500);
    let seen = read_all(&p, &disk);
    assert!(seen[..700].iter().all(|&b| b == 1));
    assert!(seen[700..].iter().all(|&b| b == 0));
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetSize(u64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (0u64..6000, prop::collection::vec(any::<u8>(), 1..1500))
            .prop_map(|(o, d)| Op::Write(o, d)),
        1 => (0u64..7000).prop_map(Op::SetSize),
    ];
    prop::collection::vec(op, 0..20)
}

/// The operations on a `Pending` over `disk`.
fn replay(disk: &[u8], ops: &[Op]) -> Pending {
    let mut p = Pending::new(disk.len() as u64);
    for op in ops {
        match op {
            Op::Write(off, data) => write(&mut p, disk, *off, data),
            Op::SetSize(n) => p.set_size(*n),
        }
    }
    p
}

/// The same operations on plain bytes: what a reader must see.
fn reference(disk: &[u8], ops: &[Op]) -> Vec<u8> {
    let mut f = disk.to_vec();
    for op in ops {
        match op {
            Op::Write(off, data) => {
                let end = *off as usize + data.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[*off as usize..end].copy_from_slice(data);
            }
            Op::SetSize(n) => f.resize(*n as usize, 0),
        }
    }
    f
}

proptest! {
    #[test]
    fn reads_and_syncs_match_plain_bytes(
        disk in prop::collection::vec(any::<u8>(), 0..5000),
        ops in ops(),
    ) {
        let mut p = replay(&disk, &ops);
        let want = reference(&disk, &ops);
        prop_assert_eq!(read_all(&p, &disk), want.clone());
        let mut synced = disk.clone();
        apply(&mut synced, &p.sync());
        prop_assert_eq!(synced, want);
    }

    /// Whatever a cut keeps, each sector below both sizes holds either its content at the last
    /// sync or its content at the cut, never a mix or anything else.
    #[test]
    fn a_cut_leaves_each_sector_old_or_new(
        disk in prop::collection::vec(any::<u8>(), 0..5000),
        ops in ops(),
        keep in prop::collection::vec(any::<bool>(), 64),
        keep_size in any::<bool>(),
        big_blocks in any::<bool>(),
    ) {
        let mut p = replay(&disk, &ops);
        let new = reference(&disk, &ops);
        let block = if big_blocks { 4096 } else { SECTOR };
        let mut after = disk.clone();
        apply(&mut after, &p.cut(CutChoice { block, keep_size }, |b| keep[b as usize % 64]));
        let size = if keep_size { new.len() } else { disk.len() };
        prop_assert_eq!(after.len(), size);
        // An unsynced truncate that survives (with the new size) zeroes the old content past it.
        let mut cur = disk.len();
        let mut truncated = usize::MAX;
        for op in &ops {
            match op {
                Op::Write(off, data) => cur = cur.max(*off as usize + data.len()),
                Op::SetSize(n) => {
                    if (*n as usize) < cur {
                        truncated = truncated.min(*n as usize);
                    }
                    cur = *n as usize;
                }
            }
        }
        let old_at = |i: usize, cut_at: usize| if i < cut_at { disk.get(i).copied().unwrap_or(0) } else { 0 };
        for s in 0..size.div_ceil(SECTOR as usize) {
            let (a, b) = (s * SECTOR as usize, ((s + 1) * SECTOR as usize).min(size));
            let is_old = (a..b).all(|i| after[i] == old_at(i, usize::MAX));
            let is_truncated = keep_size && (a..b).all(|i| after[i] == old_at(i, truncated));
            // Past the new size the page held zeros (a truncate clears the rest of its sector).
            let is_new = (a..b).all(|i| after[i] == new.get(i).copied().unwrap_or(0));
            prop_assert!(is_old || is_truncated || is_new, "sector {} is neither old nor new", s);
        }
    }
}
