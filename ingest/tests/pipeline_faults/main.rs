//! The fault suite: the whole pipeline on a private stack per case (its own Kafka and FerretDB
//! from `scripts/stack`, the real inference service with MobileNetV2, both consumers, several
//! producers and a `dataflow count --follow`), one fault injected mid-stream, then the same
//! exactness check for every case (see `harness.rs`).
//!
//! Needs what `scripts/stack up` needs (`scripts/setup`) and the assets in `$IOT_ASSETS_DIR`
//! (default `../shared/assets`); never touches the shared stack. Cases run two at a time.

mod harness;

use harness::{Case, Part, Signal};

/// The broker dies without warning while producers send, and comes back on the same data.
/// Producers keep their messages queued (idempotent, so retries cannot duplicate), consumers
/// lose their reads and commits for a while and resume from the committed offsets.
#[test]
fn kafka_broker_killed_mid_stream_and_restarted() {
    Case::new("kafka-killed").run(|run| {
        run.wait_inferred(100);
        run.outage("Kafka killed", |run| {
            run.stack.kill(Part::Kafka);
            assert!(!iot_bench::testkit::port_open(run.stack.ports.kafka), "the broker still answers");
            run.sleep_s(10);
            run.stack.start_missing();
        });
    });
}

/// MongoDB stops answering (SIGSTOP) for longer than the clients' timeouts: connections stay
/// open but nothing comes back. Writes fail or hang, are retried, and land once it resumes.
/// The follower polls through it; `--settle-ms` above the stall is the documented setting for a
/// server that can stall (a change stamped just before the freeze becomes visible 18 s late).
#[test]
fn mongo_frozen_longer_than_client_timeouts() {
    Case::new("mongo-frozen").tweak(|plan| plan.add_args("follower", &["--settle-ms=30000"])).run(|run| {
        run.wait_inferred(100);
        run.outage("MongoDB frozen", |run| {
            run.stack.signal(Part::Mongo, Signal::Stop);
            run.sleep_s(18);
            assert!(!run.mongo_answers(), "MongoDB answered while stopped");
            run.stack.signal(Part::Mongo, Signal::Cont);
        });
        run.expect_logged("db-consumer", "MongoDB upsert failed");
        run.expect_logged("infer-consumer", "MongoDB upsert failed");
    });
}

/// MongoDB is killed (SIGKILL) mid-stream and restarted on the same data folder 10 s later.
#[test]
fn mongo_killed_mid_stream_and_restarted() {
    Case::new("mongo-killed").run(|run| {
        run.wait_inferred(100);
        run.outage("MongoDB killed", |run| {
            run.stack.kill(Part::Mongo);
            run.sleep_s(10);
            run.stack.start_missing();
        });
        run.expect_logged("db-consumer", "MongoDB upsert failed");
        run.expect_logged("infer-consumer", "MongoDB upsert failed");
        run.expect_logged("follower", "polling again");
    });
}
