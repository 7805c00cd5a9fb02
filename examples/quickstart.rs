//! The whole loop: add memories, retrieve for a new task, report how the task went, reopen.
//!
//! `cargo run --release --example quickstart` (the model is fetched and verified on first use).

use memrl::{Bank, NewMemory};

fn main() -> memrl::Result<()> {
    let dir = std::env::temp_dir().join(format!("memrl-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| memrl::Error::Io {
        path: dir.clone(),
        source: e,
    })?;
    let bank = Bank::options()
        .model("all-MiniLM-L6-v2")
        .open(dir.join("bank.safetensors"))?;
    bank.add(
        NewMemory::new("book a flight to Lisbon", "search by airport code (LIS)").success(true),
    )?;
    bank.add(NewMemory::new(
        "book a train to Porto",
        "compare the day trains first",
    ))?;
    let r = bank.retrieve("fly to Porto")?.remove(0);
    for hit in &r.hits {
        println!(
            "memory {} score {:+.3} Q {:+.3}: {}",
            hit.id, hit.score, hit.q, hit.experience
        );
    }
    bank.feedback(r.id, 1.0)?; // the episode succeeded: the injected memories' Q rises
    drop(bank);
    let bank = Bank::open(dir.join("bank.safetensors"))?; // everything above is in its log
    println!(
        "after reopening: {:?}",
        bank.memories().iter().map(|m| m.q).collect::<Vec<_>>()
    );
    Ok(())
}
