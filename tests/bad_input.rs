//! Every bad input of the core engine is a clear error and changes nothing.

mod common;

use common::state;
use memrl::{Bank, BankConfig, Error, Limits, NewMemory, Queries, RetrievalConfig};

fn bank() -> Bank {
    bank_with(Limits::default())
}

fn bank_with(limits: Limits) -> Bank {
    let b = Bank::options()
        .bank_config(BankConfig::new(3, "bad"))
        .limits(limits)
        .device(common::device())
        .in_memory()
        .unwrap();
    b.add(NewMemory {
        id: Some(7),
        embedding: Some(vec![1.0, 0.0, 0.0]),
        ..Default::default()
    })
    .unwrap();
    b
}

#[test]
fn wrong_dimension_is_refused() {
    let b = bank();
    let before = state(&b);
    let e = b.retrieve(&[vec![1.0, 0.0]][..]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimensionMismatch {
                what: "query",
                expected: 3,
                got: 2
            }
        ),
        "{e}"
    );
    let rows = [0.5f32; 10];
    let e = b.retrieve(Queries::Rows(&rows)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimensionMismatch {
                expected: 3,
                got: 10,
                ..
            }
        ),
        "{e}"
    );
    let e = b
        .add(NewMemory {
            embedding: Some(vec![1.0; 4]),
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::DimensionMismatch {
                what: "intent embedding",
                expected: 3,
                got: 4
            }
        ),
        "{e}"
    );
    assert_eq!(state(&b), before);
}

#[test]
fn non_finite_and_zero_embeddings_are_refused_and_the_batch_is_not_half_added() {
    let b = bank();
    let before = state(&b);
    for bad in [
        vec![f32::NAN, 0.0, 0.0],
        vec![0.0, f32::INFINITY, 0.0],
        vec![0.0, 0.0, 0.0],
    ] {
        let batch = vec![
            NewMemory {
                embedding: Some(vec![0.0, 1.0, 0.0]),
                ..Default::default()
            },
            NewMemory {
                embedding: Some(bad.clone()),
                ..Default::default()
            },
        ];
        let e = b.add_many(batch).unwrap_err();
        assert!(matches!(e, Error::InvalidEmbedding { index: 1, .. }), "{e}");
        let e = b.retrieve(&[vec![1.0, 0.0, 0.0], bad][..]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidEmbedding {
                    what: "query",
                    index: 1,
                    ..
                }
            ),
            "{e}"
        );
    }
    assert_eq!(state(&b), before);
    assert_eq!(b.len(), 1);
}

#[test]
fn duplicate_ids_are_refused() {
    let b = bank();
    let before = state(&b);
    let e = b
        .add(NewMemory {
            id: Some(7),
            embedding: Some(vec![0.0, 1.0, 0.0]),
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(e, Error::DuplicateId(7)), "{e}");
    let e = b
        .add_many(vec![
            NewMemory {
                id: Some(8),
                embedding: Some(vec![0.0, 1.0, 0.0]),
                ..Default::default()
            },
            NewMemory {
                id: Some(8),
                embedding: Some(vec![0.0, 0.0, 1.0]),
                ..Default::default()
            },
        ])
        .unwrap_err();
    assert!(matches!(e, Error::DuplicateId(8)), "{e}");
    assert_eq!(state(&b), before);
    // Automatic ids skip explicit ones.
    let ids = b
        .add_many(vec![
            NewMemory {
                id: Some(9),
                embedding: Some(vec![0.0, 1.0, 0.0]),
                ..Default::default()
            },
            NewMemory {
                embedding: Some(vec![0.0, 0.0, 1.0]),
                ..Default::default()
            },
        ])
        .unwrap();
    assert_eq!(ids, vec![9, 8]);
    assert_eq!(b.next_id(), 10);
}

#[test]
fn invalid_retrieval_configs_name_their_field() {
    let b = bank();
    let q = [vec![1.0, 0.0, 0.0]];
    for (cfg, field) in [
        (
            RetrievalConfig {
                k1: 0,
                ..Default::default()
            },
            "k1",
        ),
        (
            RetrievalConfig {
                k2: 0,
                ..Default::default()
            },
            "k2",
        ),
        (
            RetrievalConfig {
                lambda: 1.1,
                ..Default::default()
            },
            "lambda",
        ),
        (
            RetrievalConfig {
                lambda: -0.5,
                ..Default::default()
            },
            "lambda",
        ),
    ] {
        let e = b.retrieve_with(&q[..], &cfg).unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig { field: f, .. } if f == field),
            "{e}"
        );
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[test]
fn removing_an_unknown_id_is_an_error() {
    let b = bank();
    assert!(matches!(b.remove(8), Err(Error::NotFound(8))));
    assert_eq!(b.len(), 1);
}

#[test]
fn limits_refuse_oversized_calls_and_change_nothing() {
    use memrl::Outcome;
    let b = bank_with(Limits {
        max_text_bytes: 8,
        max_batch: 2,
        max_memories: 3,
    });
    let before = state(&b);
    let m = |intent: &str, v: [f32; 3]| NewMemory {
        intent: intent.into(),
        embedding: Some(v.to_vec()),
        ..Default::default()
    };
    let e = b.add(m("nine bytes", [0.0, 1.0, 0.0])).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TextTooLong {
                what: "intent bytes",
                index: 0,
                limit: 8,
                got: 10
            }
        ),
        "{e}"
    );
    let e = b
        .add(NewMemory {
            metadata: Some(serde_json::json!({"a": "long value"})),
            ..m("ok", [0.0, 1.0, 0.0])
        })
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TextTooLong {
                what: "metadata bytes (as JSON)",
                ..
            }
        ),
        "{e}"
    );
    let three = vec![
        m("a", [0.0, 1.0, 0.0]),
        m("b", [0.0, 0.0, 1.0]),
        m("c", [1.0, 1.0, 0.0]),
    ];
    let e = b.add_many(three).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                limit: 2,
                got: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = b
        .apply_outcomes(&vec![
            Outcome {
                memory_ids: vec![7],
                reward: 1.0
            };
            3
        ])
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("outcomes in one batch: 3 exceeds the limit of 2"),
        "{e}"
    );
    let e = b.retrieve(&vec![vec![1.0, 0.0, 0.0]; 3]).unwrap_err();
    assert!(e.to_string().contains("queries in one retrieval"), "{e}");
    // Counted as queries however they come: rows too.
    let e = b.retrieve(Queries::Rows(&[1.0; 9])).unwrap_err();
    assert!(e.to_string().contains("queries in one retrieval: 3"), "{e}");
    assert_eq!(state(&b), before);
    // The bank's size: one memory is there, two more fit, a third does not.
    b.add_many(vec![m("a", [0.0, 1.0, 0.0]), m("b", [0.0, 0.0, 1.0])])
        .unwrap();
    let e = b.add(m("c", [1.0, 1.0, 0.0])).unwrap_err();
    assert!(
        e.to_string()
            .contains("memories in the bank: 4 exceeds the limit of 3"),
        "{e}"
    );
    assert!(Bank::options()
        .bank_config(BankConfig::new(3, "bad"))
        .limits(Limits {
            max_memories: 0,
            ..Limits::default()
        })
        .in_memory()
        .is_err());
}
