//! Fault injection for the I/O steps of a bank's write path.
//!
//! Every file operation a write can run between validating it and returning (the log append
//! and its fsync, cutting a record off again, the checkpoint's temporary file, its fsync, the
//! rename, the directory fsync, emptying the log) goes through [`step`] with a stable name. In
//! a normal build [`step`] is an inlined `Ok(())`. In the crate's own tests a thread-local plan
//! can make any step fail, and a trace records every step that ran, so a test runs a write once
//! to learn its steps, then once more for each step with that step failing (or every step from
//! it on: a disk that died), and checks that the call's result tells the truth about what is on
//! disk (`src/bank/fault_tests.rs`).
//!
//! Why named steps in a registry rather than an injectable file-operations trait: a trait would
//! have to be threaded through the log writer, the snapshot writer and the bank as a type
//! parameter or a boxed object, making every production path generic or dynamic for the sake of
//! tests, and it would be public surface; a registry costs one call per step that compiles to
//! nothing outside tests. The trace makes the test complete by construction: a step added later
//! shows up in it and is failed in turn, without the test naming it. The plan is per thread,
//! so tests running in parallel never see each other's faults; the one step on another thread
//! (the interval-sync thread's fsync) is outside it and is tested by its own failure path.

use std::io;

/// Runs before the I/O step `name`: an error means "this step failed" and the caller handles it
/// exactly as it would a real failure of the operation.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn step(_name: &'static str) -> io::Result<()> {
    Ok(())
}

/// Runs before the I/O step `name` (see the module docs); fails when the thread's plan says so.
#[cfg(test)]
pub(crate) fn step(name: &'static str) -> io::Result<()> {
    test_plan::step(name)
}

/// `file.write_all(bytes)` as the step `name`. A failure writes the first half of `bytes` before
/// it returns, as a real short write before a full disk does.
pub(crate) fn write_all(
    file: &mut impl io::Write,
    bytes: &[u8],
    name: &'static str,
) -> io::Result<()> {
    if let Err(e) = step(name) {
        let _ = file.write_all(&bytes[..bytes.len() / 2]);
        return Err(e);
    }
    file.write_all(bytes)
}

#[cfg(test)]
pub(crate) use test_plan::{arm, Fail};

#[cfg(test)]
mod test_plan {
    use std::cell::RefCell;
    use std::io;

    /// Which steps of an armed thread fail.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Fail {
        /// None: only record the trace.
        Never,
        /// The step with this index in the trace (0-based), once.
        Step(usize),
        /// Every step from this index on.
        From(usize),
    }

    #[derive(Default)]
    struct Plan {
        armed: bool,
        fail: Option<Fail>,
        trace: Vec<&'static str>,
    }

    thread_local! {
        static PLAN: RefCell<Plan> = RefCell::new(Plan::default());
    }

    pub(super) fn step(name: &'static str) -> io::Result<()> {
        PLAN.with(|plan| {
            let mut plan = plan.borrow_mut();
            if !plan.armed {
                return Ok(());
            }
            let index = plan.trace.len();
            plan.trace.push(name);
            let fails = match plan.fail {
                Some(Fail::Step(i)) => i == index,
                Some(Fail::From(i)) => index >= i,
                Some(Fail::Never) | None => false,
            };
            if fails {
                Err(io::Error::other(format!(
                    "injected fault at step {index} ({name})"
                )))
            } else {
                Ok(())
            }
        })
    }

    /// Arms this thread with `fail` until the guard is dropped or read.
    pub(crate) fn arm(fail: Fail) -> Armed {
        PLAN.with(|plan| {
            *plan.borrow_mut() = Plan {
                armed: true,
                fail: Some(fail),
                trace: Vec::new(),
            }
        });
        Armed
    }

    /// Disarms the thread when dropped.
    pub(crate) struct Armed;

    impl Armed {
        /// Disarms the thread and returns the steps that ran while it was armed.
        pub(crate) fn trace(self) -> Vec<&'static str> {
            PLAN.with(|plan| std::mem::take(&mut plan.borrow_mut().trace))
        }
    }

    impl Drop for Armed {
        fn drop(&mut self) {
            PLAN.with(|plan| *plan.borrow_mut() = Plan::default());
        }
    }
}
