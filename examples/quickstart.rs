//! Quickstart: add memories, retrieve, report an outcome, save and load the bank.
//!
//! The 4-d vectors stand in for real embeddings (any model's, as long as intents and queries
//! come from the same one). Run with `cargo run --release --example quickstart`.

use memrl::{snapshot, Bank, BankConfig, Device, LoadOptions, NewMemory, Outcome, RetrievalConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut bank = Bank::new(BankConfig::new(4, "toy-4d"), &Device::Cpu)?;
    let memory = |intent: &str, embedding: Vec<f32>, experience: &str| NewMemory {
        intent: intent.into(),
        embedding,
        experience: experience.into(),
        success: true,
        ..Default::default()
    };
    bank.add(memory(
        "parse a date",
        vec![1.0, 0.2, 0.0, 0.0],
        "use NaiveDate::parse_from_str",
    ))?;
    bank.add(memory(
        "sort a list",
        vec![0.0, 0.1, 1.0, 0.0],
        "use sort_unstable",
    ))?;

    let query = vec![0.9, 0.3, 0.1, 0.0]; // "read the date in this log line"
    let hits = bank.retrieve_vectors(&[query], &RetrievalConfig::default())?;
    let best = hits[0]
        .first()
        .ok_or("nothing passed the similarity gate")?;
    println!(
        "retrieved {:?} (cosine {:.3}, Q {})",
        best.experience, best.sim, best.q
    );

    // The episode succeeded: every injected memory gets reward +1, Q <- Q + 0.3 (1 - Q).
    let used: Vec<u64> = hits[0].iter().map(|h| h.id).collect();
    bank.apply_outcomes(&[Outcome {
        memory_ids: used,
        reward: 1.0,
    }])?;
    let q = bank.get(best.id).ok_or("memory vanished")?.q;
    println!("Q after one success: {q}");

    let path = std::env::temp_dir().join("memrl-quickstart.safetensors");
    snapshot::save(&bank, &path)?;
    let loaded = snapshot::load(&path, &Device::Cpu, &LoadOptions::default())?;
    let reloaded_q = loaded.get(best.id).ok_or("memory missing after load")?.q;
    println!(
        "saved and reloaded {} memories from {}; Q {reloaded_q}",
        loaded.len(),
        path.display()
    );
    Ok(())
}
