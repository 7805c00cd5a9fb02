//! The promises of the README's table that hold across files and processes, each tested as a
//! class: readers racing checkpoints, logs bound to their bank, links, directories, ids at the
//! end of their range, finite values under any sequence of finite inputs, numeric settings at
//! their extremes. (Fault injection of every I/O step is a unit test: `src/bank/fault_tests.rs`;
//! the crash and stress tests are `tests/durability.rs`.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memrl::{Bank, BankConfig, CheckpointPolicy, Error, NewMemory, OpenOptions};

fn config() -> BankConfig {
    BankConfig::new(4, "toy")
}

fn writer() -> OpenOptions {
    Bank::options()
        .bank_config(config())
        .checkpoint(CheckpointPolicy::Manual)
}

fn reader(path: &Path) -> memrl::Result<Bank> {
    Bank::options().read_only(true).open(path)
}

fn log_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".wal");
    PathBuf::from(name)
}

fn memory(i: u64) -> NewMemory {
    let angle = i as f32 * 0.7;
    NewMemory::new(format!("intent {i}"), format!("experience {i}"))
        .id(i)
        .embedding(vec![angle.cos(), angle.sin(), 0.5, (i % 3) as f32])
}

/// A writer adds memories one at a time and checkpoints after each; readers open the bank over
/// and over meanwhile, and each must see every add acknowledged before it started. Before the
/// race was detected, a reader that read the old snapshot and then the just-emptied log missed
/// the records in between.
#[test]
fn readers_racing_checkpoints_see_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let bank = writer().open(&path).unwrap();
    // A few hundred memories make the snapshot big enough for its load to overlap checkpoints.
    bank.add_many((1000..1300).map(memory).collect()).unwrap();
    bank.checkpoint().unwrap();
    let acknowledged = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..300 {
                bank.add(memory(i)).unwrap();
                acknowledged.store(i + 1, Ordering::SeqCst);
                bank.checkpoint().unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(Ordering::SeqCst) {
                    let seen = acknowledged.load(Ordering::SeqCst);
                    let view = reader(&path).unwrap();
                    for id in 0..seen {
                        assert!(
                            view.contains(id),
                            "a reader started after add {id} was acknowledged and does not see it (log_seq {})",
                            view.log_seq()
                        );
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert!(reads.load(Ordering::Relaxed) > 10, "the readers barely ran");
    assert_eq!(reader(&path).unwrap().len(), 600);
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A log is bound to its bank's identity: another bank's log, or the log of an earlier bank at
/// the same path, is refused by readers and writers alike, and nothing is changed.
#[test]
fn a_log_of_another_bank_or_an_earlier_one_is_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    for (path, ids) in [(&a, 0..3), (&b, 10..12)] {
        let bank = writer().open(path).unwrap();
        bank.add_many(ids.map(memory).collect()).unwrap();
    }
    // The same shape, the same model: only the identity tells the logs apart.
    std::fs::copy(log_path(&a), log_path(&b)).unwrap();
    let log = std::fs::read(log_path(&b)).unwrap();
    for result in [reader(&b), Bank::open(&b)] {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Log { .. }), "{err}");
        assert!(err.to_string().contains("bank id"), "{err}");
    }
    assert_eq!(std::fs::read(log_path(&b)).unwrap(), log);

    // An earlier bank at the same path: its log, put back beside the new bank, is refused.
    let stale = std::fs::read(log_path(&a)).unwrap();
    std::fs::remove_file(&a).unwrap();
    std::fs::remove_file(log_path(&a)).unwrap();
    let bank = writer().open(&a).unwrap();
    bank.add(memory(5)).unwrap();
    drop(bank);
    std::fs::write(log_path(&a), &stale).unwrap();
    assert!(reader(&a).unwrap_err().to_string().contains("bank id"));

    // A copy is a new bank: the original's log is not its log.
    let c = dir.path().join("c.safetensors");
    let original = writer().open(&c).unwrap();
    original.add(memory(20)).unwrap();
    let copy = dir.path().join("copy.safetensors");
    original.save_as(&copy).unwrap();
    assert!(reader(&copy).unwrap().contains(20));
    std::fs::copy(log_path(&c), log_path(&copy)).unwrap();
    assert!(reader(&copy).unwrap_err().to_string().contains("bank id"));
}

/// A bank reached through a symbolic link and through its target is one bank: one log, one
/// lock, and a checkpoint replaces the target's file, never the link.
#[cfg(unix)]
#[test]
fn a_bank_through_a_link_is_the_bank_it_links_to() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("real");
    std::fs::create_dir(&real_dir).unwrap();
    let target = real_dir.join("bank.safetensors");
    let link = dir.path().join("link.safetensors");
    let bank = writer().open(&target).unwrap();
    bank.add(memory(1)).unwrap();
    symlink(&target, &link).unwrap();
    // Writers through the link and through the target exclude each other.
    assert!(matches!(Bank::open(&link), Err(Error::Locked { .. })));
    drop(bank);
    let through_link = Bank::open(&link).unwrap();
    assert_eq!(
        through_link.path(),
        Some(target.canonicalize().unwrap().as_path())
    );
    assert!(matches!(Bank::open(&target), Err(Error::Locked { .. })));
    // Its writes go to the target's log and are seen through the target.
    through_link.add(memory(2)).unwrap();
    assert!(!log_path(&link).exists());
    assert!(reader(&target).unwrap().contains(2));
    // A checkpoint through the link replaces the target.
    through_link.checkpoint().unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    drop(through_link);
    let view = reader(&target).unwrap();
    assert_eq!((view.len(), view.recovery().replayed), (2, 0));
    assert_eq!(files_in(dir.path()), ["link.safetensors", "real"]);
    // A dangling link names the file to create.
    let dangling = dir.path().join("new.safetensors");
    symlink(real_dir.join("new.safetensors"), &dangling).unwrap();
    let created = writer().open(&dangling).unwrap();
    created.add(memory(3)).unwrap();
    created.checkpoint().unwrap();
    drop(created);
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(reader(&real_dir.join("new.safetensors"))
        .unwrap()
        .contains(3));
    assert_eq!(
        files_in(&real_dir),
        [
            "bank.safetensors",
            "bank.safetensors.wal",
            "new.safetensors",
            "new.safetensors.wal"
        ]
    );
}

/// A folder is not a bank: every way of opening one is refused and nothing is created, in it
/// or beside it.
#[test]
fn a_directory_is_refused_as_a_bank_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let attempts = [
        writer().open(&folder).map(drop),
        Bank::open(&folder).map(drop),
        Bank::create(&folder, config()).map(drop),
        reader(&folder).map(drop),
        Bank::peek_config(&folder).map(drop),
        Bank::in_memory(config()).unwrap().save_as(&folder),
    ];
    for result in attempts {
        let err = result.unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }
    assert_eq!(files_in(dir.path()), ["folder"]);
    assert!(files_in(&folder).is_empty());
}

/// A memory with id `u64::MAX` does not end automatic ids, in memory, after a replay of the
/// log, and after a snapshot.
#[test]
fn automatic_ids_go_on_past_the_largest_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let auto = |i: u64| {
        let mut m = memory(i);
        m.id = None;
        m
    };
    let bank = writer().open(&path).unwrap();
    bank.add(memory(u64::MAX)).unwrap();
    assert_eq!(bank.add_many(vec![auto(1), auto(2)]).unwrap(), vec![0, 1]);
    bank.add(memory(u64::MAX - 1)).unwrap();
    assert_eq!(bank.add(auto(3)).unwrap(), 2);
    drop(bank);
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.recovery().replayed, 4);
    assert_eq!(bank.add(auto(4)).unwrap(), 3);
    bank.checkpoint().unwrap();
    drop(bank);
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.add(auto(5)).unwrap(), 4);
    assert_eq!(bank.len(), 7);
}

/// The ids of one outcome batch count against `Limits::max_batch` in total, however they are
/// spread over outcomes: a batch over it is refused whole, before anything is logged.
#[test]
fn the_ids_of_an_outcome_batch_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.safetensors");
    let limits = memrl::Limits {
        max_batch: 10,
        ..Default::default()
    };
    let bank = writer().limits(limits).open(&path).unwrap();
    bank.add_many((0..3).map(memory).collect()).unwrap();
    let log = bank.log_bytes();
    let outcome = |n: usize| memrl::Outcome {
        memory_ids: (0..n as u64).map(|i| i % 3).collect(),
        reward: 1.0,
    };
    for batch in [vec![outcome(11)], vec![outcome(6), outcome(5)]] {
        let err = bank.apply_outcomes(&batch).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LimitExceeded {
                    limit: 10,
                    got: 11,
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(bank.log_bytes(), log);
    assert!(bank.apply_outcomes(&[outcome(10)]).is_ok());
    // The default limit holds for a single huge outcome too.
    let big = Bank::in_memory(config()).unwrap();
    big.add(memory(0)).unwrap();
    let err = big
        .apply_outcomes(&[memrl::Outcome {
            memory_ids: vec![0; (1 << 20) + 1],
            reward: 1.0,
        }])
        .unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
}
