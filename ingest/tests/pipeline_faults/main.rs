//! The fault suite: the whole pipeline on a private stack per case (its own Kafka and FerretDB
//! from `scripts/stack`, the real inference service with MobileNetV2, both consumers, several
//! producers and a `dataflow count --follow`), one fault injected mid-stream, then the same
//! exactness check for every case (see `harness.rs`).
//!
//! Needs what `scripts/stack up` needs (`scripts/setup`) and the assets in `$IOT_ASSETS_DIR`
//! (default `../shared/assets`); never touches the shared stack. Cases run two at a time.

#[path = "../common/mod.rs"]
mod common;
mod harness;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::stub::{Fault, Stub};

use harness::{Case, Part, Signal, Stream};

/// How long a process gets to stop on SIGTERM, or a cluster to stop after losing a member.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// The broker dies without warning while producers send, and comes back on the same data.
/// Producers keep their messages queued (idempotent, so retries cannot duplicate), consumers
/// lose their reads and commits for a while and resume from the committed offsets.
#[test]
fn kafka_broker_killed_mid_stream_and_restarted() {
    Case::new("kafka-killed").run(|run| {
        run.wait_inferred(50);
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
        run.wait_inferred(50);
        run.outage("MongoDB frozen", |run| {
            run.stack.signal(Part::Mongo, Signal::Stop);
            run.sleep_s(18);
            assert!(!run.mongo_answers(), "MongoDB answered while stopped");
            run.stack.signal(Part::Mongo, Signal::Cont);
        });
        run.expect_logged("db-consumer", "MongoDB write failed");
        run.expect_logged("infer-consumer", "MongoDB write failed");
    });
}

/// MongoDB is killed (SIGKILL) mid-stream and restarted on the same data folder 10 s later.
#[test]
fn mongo_killed_mid_stream_and_restarted() {
    Case::new("mongo-killed").run(|run| {
        run.wait_inferred(50);
        run.outage("MongoDB killed", |run| {
            run.stack.kill(Part::Mongo);
            run.sleep_s(10);
            run.stack.start_missing();
        });
        run.expect_logged("db-consumer", "MongoDB write failed");
        run.expect_logged("infer-consumer", "MongoDB write failed");
        run.expect_logged("follower", "polling again");
    });
}

/// A second db-consumer and infer-consumer join their groups mid-stream, and leave again: the
/// infer-consumer by SIGKILL (its partitions move after the session timeout and its uncommitted
/// work is done again), the db-consumer by SIGTERM (it commits what it finished on revoke).
#[test]
fn consumers_joining_and_leaving_mid_stream() {
    Case::new("rebalance").run(|run| {
        run.wait_inferred(50);
        run.outage("second consumers join, then leave", |run| {
            run.start_copy("db-consumer", "db-consumer-2");
            run.start_copy("infer-consumer", "infer-consumer-2");
            run.sleep_s(8);
            run.children.kill("infer-consumer-2");
            let log = run.children.log_tails();
            assert!(run.children.terminate("db-consumer-2", STOP_WAIT), "db-consumer-2 did not exit 0 on SIGTERM{log}");
        });
        run.expect_logged("db-consumer", "partitions revoked");
        run.expect_logged("db-consumer-2", "committed on revoke");
        run.expect_logged("infer-consumer", "partitions assigned");
    });
}

/// A second producer process sends as the same ProducerID with the same IDs (a device that
/// restarts its counter): the first message stored for an `_id` stays, every later message with
/// other content for that `_id` is dead-lettered as `id_collision`, and nothing is merged.
#[test]
fn two_producers_with_one_producer_id() {
    let stream = Stream { processes: 1, ..Stream::default() };
    let twins = stream.total() as usize;
    Case::new("same-producer-id").stream(stream).expect_dead_letters("id_collision", twins).run(|run| {
        run.wait_inferred(50);
        run.outage("a second producer reuses the ProducerIDs and IDs", |run| {
            let mut twin = run.plan.process("producer-0").clone();
            twin.name = "producer-twin".to_owned();
            let truth_log = run.work.join("truth-twin.csv");
            twin.args.retain(|a| !a.starts_with("--truth-log="));
            twin.args.push(format!("--truth-log={}", truth_log.display()));
            twin.role = harness::Role::Producer { truth_log };
            run.launch(twin);
            run.sleep_s(5);
        });
        run.expect_logged("db-consumer", "ID collision");
        run.expect_logged("infer-consumer", "ID collision");
    });
}

/// A change-log entry stamped 5 minutes ahead of the server's clock lands mid-stream: the
/// follower logs it and keeps counting the changes after it (it used to wait for the future).
#[test]
fn a_change_log_entry_stamped_in_the_future() {
    Case::new("future-entry").run(|run| {
        run.wait_inferred(50);
        run.outage("a change-log entry 5 minutes ahead", |run| {
            run.stamp_change_ahead(Duration::from_secs(300));
            run.sleep_s(3);
        });
        run.expect_logged("follower", "ahead of the server clock");
    });
}

/// A 3-process follower cluster loses process 1 to SIGKILL: the others stop with exit code 4 and
/// one clear message, and the restarted cluster catches up. Later SIGTERM to process 2 stops all
/// three with exit 0. The restarted cluster ends equal to the truth and to a batch count.
#[test]
fn a_follower_cluster_member_killed_then_terminated() {
    let stream = Stream { records: 200, ..Stream::default() };
    Case::new("follower-cluster").stream(stream).follower_cluster(3).run(|run| {
        run.wait_inferred(50);
        run.outage("follower process 1 killed", |run| {
            run.children.kill("follower-1");
            for name in ["follower-0", "follower-2"] {
                let status = run.children.wait_exit(name, STOP_WAIT);
                assert_eq!(
                    status.and_then(|s| s.code()),
                    Some(4),
                    "{name} after losing a peer{}",
                    run.children.log_tails()
                );
            }
            run.restart_followers();
            // The restarted cluster reloads while the producers keep sending.
            run.sleep_s(2);
        });
        // Long enough for the restarted cluster to reload; the producers are still sending.
        run.sleep_s(5);
        run.outage("follower process 2 asked to stop", |run| {
            assert!(iot_bench::testkit::signal(run.children.pid("follower-2"), Signal::Term), "follower-2 is gone");
            for name in run.followers() {
                let status = run.children.wait_exit(&name, STOP_WAIT);
                assert!(
                    status.is_some_and(|s| s.success()),
                    "{name} after SIGTERM to process 2: {status:?}{}",
                    run.children.log_tails()
                );
            }
            run.restart_followers();
            // The restarted cluster reloads while the producers keep sending.
            run.sleep_s(2);
        });
        run.expect_logged("follower-0", "cluster peer lost");
        run.expect_logged("follower-0", "process 2 was asked to stop");
    });
}

/// The model crashes (HTTP 500, from a stub in front of the real service) on one image among
/// hundreds, mid-stream: that record is dead-lettered as `inference_failed` after bounded
/// retries, and the rest of its batch goes through.
#[test]
fn the_model_fails_on_one_image() {
    let stub: Arc<OnceLock<Arc<Stub>>> = Arc::default();
    let installed = stub.clone();
    Case::new("model-500")
        .tweak(move |plan| {
            let proxy = Stub::new(&plan.infer_url(), Fault::InternalError);
            plan.set_flag("infer-consumer", "--infer-url", &proxy.clone().serve_in_background());
            let _ = installed.set(proxy);
        })
        .expect_dead_letters("inference_failed", 1)
        .run(|run| {
            let stub = stub.get().expect("the stub");
            run.wait_inferred(50);
            run.outage("the model crashes on the next image", |run| {
                stub.mark_next();
                run.sleep_s(5);
            });
            assert!(stub.marked_requests.load(Ordering::SeqCst) > 1, "the marked image was not retried");
            run.expect_logged("infer-consumer", "record sent to the dead-letter topic");
        });
}

/// Hostile records arrive mid-stream: an image one column over the consumers' pixel limit
/// (every CIFAR-10 image is exactly at it) and a 1 MB record that is not UTF-8, whose dead
/// letter would be over the producer's 1 MB message limit untruncated. Both are dead-lettered
/// with their reasons; nothing else is lost or held up.
#[test]
fn records_at_and_over_the_limits() {
    let max_pixels = (32 * 32).to_string();
    Case::new("limits")
        .tweak(move |plan| {
            for consumer in ["db-consumer", "infer-consumer"] {
                plan.set_flag(consumer, "--max-image-pixels", &max_pixels);
            }
        })
        .expect_dead_letters("bad_image", 1)
        .expect_dead_letters("not_utf8", 1)
        .run(|run| {
            run.wait_inferred(50);
            run.outage("hostile records", |run| {
                let over = common::record("hostile-cam", 1, "cat", common::png_base64(33, 32, 1));
                let binary: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8 | 0x80).collect();
                run.send_raw(&[("hostile-cam/1", &over), ("hostile-cam/2", &binary)]);
                run.sleep_s(3);
            });
            run.expect_logged("db-consumer", "carries only the start of the 1000000-byte payload");
            run.expect_logged("infer-consumer", "carries only the start of the 1000000-byte payload");
        });
}
