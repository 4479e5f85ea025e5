//! `dataflow count --follow` against the real MongoDB-compatible server: the CSV keeps up with
//! inserts, label flips both ways and deletes, from several writers at once.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bson::Document;
use common::*;
use iot_bench::expected::read_error_counts;
use iot_bench::{generate, Spec, LABELS};
use iot_schema::write::Upsert;
use iot_schema::{field, write, ImageMessage};
use mongodb::sync::{Client, Database};

/// The test's own model of the collection: `_id -> (producer, truth, inferred, deleted)`.
type Model = HashMap<String, (String, String, Option<String>, bool)>;

fn errors_of(model: &Model) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for (producer, truth, inferred, deleted) in model.values() {
        if *deleted {
            continue;
        }
        let errors = counts.entry(producer.clone()).or_insert(0);
        if inferred.as_ref().is_some_and(|label| label != truth) {
            *errors += 1;
        }
    }
    counts
}

fn message(doc_id: &str, producer: &str, truth: &str) -> ImageMessage {
    let id = doc_id.rsplit_once('/').and_then(|(_, id)| id.parse().ok()).unwrap();
    ImageMessage { id, producer_id: producer.into(), ground_truth: truth.into(), data: String::new(), sent_at_ms: None }
}

fn apply(db: &Database, write: write::Write) {
    iot_bench::mongo::apply(db, "inferences", &write).unwrap();
}

/// A hard delete, which the change log makes visible too.
fn delete(db: &Database, id: &str) {
    db.collection::<Document>("inferences").delete_one(write::by_doc_id(id)).run().unwrap();
    let Upsert { filter, update } = write::change_entry(id);
    db.collection::<Document>(&write::change_log("inferences")).update_one(filter, update).upsert(true).run().unwrap();
}

/// Several writers at once: each flips labels both ways, deletes and inserts, through the write
/// contract, and records what it did in its own model.
fn write_changes(db: &Database, model: &Model, writers: usize) -> Model {
    let ids: Vec<String> = {
        // Not the deleted ones: a tombstone stays one whatever is written to it later.
        let mut ids: Vec<_> = model.iter().filter(|(_, record)| !record.3).map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    };
    let results: Vec<Model> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let ids = &ids;
                scope.spawn(move || {
                    let mut mine = Model::new();
                    for (n, id) in ids.iter().skip(w).step_by(writers * 40).take(25).enumerate() {
                        let (producer, truth, inferred, _) = model[id].clone();
                        let now = bson::DateTime::now();
                        match n % 5 {
                            // correct -> wrong, wrong -> correct, pending -> inferred
                            0 | 1 | 2 => {
                                let flipped = if inferred.as_deref() == Some(&truth) {
                                    LABELS.iter().find(|l| **l != truth).unwrap().to_string()
                                } else {
                                    truth.clone()
                                };
                                apply(
                                    db,
                                    write::store_inference(&message(id, &producer, &truth), &flipped, "test", now),
                                );
                                mine.insert(id.clone(), (producer, truth, Some(flipped), false));
                            }
                            3 => {
                                match w % 2 {
                                    0 => apply(db, write::mark_deleted(id)),
                                    _ => delete(db, id),
                                }
                                mine.insert(id.clone(), (producer, truth, inferred, true));
                            }
                            _ => {
                                let new_id = format!("new-writer-{w}/{n}");
                                let msg = message(&new_id, &format!("new-writer-{w}"), "cat");
                                apply(db, write::store_metadata(&msg, now));
                                apply(db, write::store_inference(&msg, "dog", "test", now));
                                mine.insert(new_id, (msg.producer_id, "cat".into(), Some("dog".into()), false));
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut updated = model.clone();
    results.into_iter().for_each(|changes| updated.extend(changes));
    updated
}

struct TestDb {
    client: Client,
    name: String,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.client.database(&self.name).drop().run();
    }
}

fn base(records: u64, seed: u64) -> (TestDb, Model) {
    let client = Client::with_uri_str(mongo_uri()).unwrap();
    let db = TestDb { client, name: unique_db("follow_test") };
    let spec = Spec { records, producers: 12, awkward_names: true, seed, ..Spec::default() };
    iot_bench::mongo::load(&mongo_uri(), &db.name, "inferences", &spec, |_| {})
        .unwrap_or_else(|err| panic!("cannot load the base set ({err:#}); start the stack with scripts/stack up"));
    let mut model = Model::new();
    generate(&spec, |r| {
        model.insert(
            r.doc_id.clone(),
            (r.producer_id.to_owned(), r.ground_truth.to_owned(), r.inferred.map(str::to_owned), false),
        );
    });
    (db, model)
}

fn follow_and_check(processes: usize, seed: u64) {
    let (db, model) = base(5_000, seed);
    let dir = tempfile::tempdir().unwrap();
    let output: PathBuf = dir.path().join("follow.csv");
    let uri = mongo_uri();
    let args = ["--mongo-uri", uri.as_str(), "--db", db.name.as_str()];
    let hosts = hostfile(dir.path(), processes);
    let _followers: Vec<Follower> = (0..processes)
        .map(|p| {
            let mut cluster = args.to_vec();
            let (n, p, h) = (processes.to_string(), p.to_string(), hosts.to_str().unwrap().to_owned());
            if processes > 1 {
                cluster.extend(["-w", "2", "-n", &n, "-p", &p, "-h", &h]);
                start_follower(&cluster, &output)
            } else {
                cluster.extend(["-w", "2"]);
                start_follower(&cluster, &output)
            }
        })
        .collect();
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(120));

    let changed = write_changes(&db.client.database(&db.name), &model, 3);
    assert_ne!(errors_of(&changed), errors_of(&model), "the changes must move the counts");
    wait_for_csv(&output, &errors_of(&changed), Duration::from_secs(60));

    // A fresh batch count agrees with the followed CSV.
    let (batch, _) = count(dir.path(), "batch.csv", &args);
    assert_eq!(batch, errors_of(&changed));
}

#[test]
fn follow_keeps_the_csv_equal_to_a_fresh_count_through_concurrent_changes() {
    follow_and_check(1, 21);
}

#[test]
fn follow_on_two_processes_of_two_workers() {
    follow_and_check(2, 22);
}

#[test]
fn sigterm_stops_cleanly_with_the_csv_in_place() {
    let (db, model) = base(500, 23);
    // Change-log entries: one past the retention, which the follower prunes, and a recent one.
    let log = db.client.database(&db.name).collection::<Document>(&write::change_log("inferences"));
    let hour_ago = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() - 3_600_000);
    let some_id = model.keys().next().unwrap().clone();
    log.insert_one(bson::doc! { "_id": "old", field::CHANGED_RECORD: &some_id, field::CHANGED_AT: hour_ago })
        .run()
        .unwrap();
    log.insert_one(
        bson::doc! { "_id": "recent", field::CHANGED_RECORD: &some_id, field::CHANGED_AT: bson::DateTime::now() },
    )
    .run()
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("follow.csv");
    let uri = mongo_uri();
    let mut follower = start_follower(&["--mongo-uri", &uri, "--db", &db.name], &output);
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(60));
    let left: Vec<String> =
        log.find(bson::doc! {}).run().unwrap().map(|d| d.unwrap().get_str("_id").unwrap().to_owned()).collect();
    assert_eq!(left, ["recent"], "entries past --change-retention-s are pruned, newer ones kept");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(follower.child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = follower.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "--follow did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert_eq!(read_error_counts(&output).unwrap(), errors_of(&model));
}

/// Flips one record's label through the write contract; returns the record's new model entry.
fn flip(db: &Database, model: &Model, id: &str) -> (String, String, Option<String>, bool) {
    let (producer, truth, inferred, _) = model[id].clone();
    let flipped = match inferred.as_deref() == Some(truth.as_str()) {
        true => LABELS.iter().find(|l| **l != truth).unwrap().to_string(),
        false => truth.clone(),
    };
    apply(db, write::store_inference(&message(id, &producer, &truth), &flipped, "test", bson::DateTime::now()));
    (producer, truth, Some(flipped), false)
}

#[test]
fn a_restarted_follower_catches_up_with_changes_made_while_it_was_down() {
    let (db, model) = base(2_000, 24);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("follow.csv");
    let uri = mongo_uri();
    let args = ["--mongo-uri", uri.as_str(), "--db", db.name.as_str()];
    let database = db.client.database(&db.name);
    let mut follower = start_follower(&args, &output);
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(60));
    let changed = write_changes(&database, &model, 2);
    // Killed without warning, possibly in the middle of a round: the CSV is still whole.
    let _ = follower.child.kill();
    let _ = follower.child.wait();
    assert!(read_error_counts(&output).is_ok(), "the CSV survives a kill");
    let changed_while_down = write_changes(&database, &changed, 3);
    let _follower = start_follower(&args, &output);
    wait_for_csv(&output, &errors_of(&changed_while_down), Duration::from_secs(60));
}

/// The no-gap guarantee: a change-log entry stamped before the follower's latest poll but
/// visible only after it (a write that committed late), and one stamped in the same millisecond
/// as an entry already seen, are both picked up.
#[test]
fn late_and_same_millisecond_changes_are_not_missed() {
    let (db, mut model) = base(500, 25);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("follow.csv");
    let uri = mongo_uri();
    let database = db.client.database(&db.name);
    let _follower = start_follower(&["--mongo-uri", &uri, "--db", &db.name], &output);
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(60));

    // Records the model got right, so that making them wrong moves a count.
    let mut ids: Vec<String> = model
        .iter()
        .filter(|(_, (_, truth, inferred, _))| inferred.as_ref() == Some(truth))
        .map(|(id, _)| id.clone())
        .collect();
    ids.sort();
    let seen = flip(&database, &model, &ids[0]);
    model.insert(ids[0].clone(), seen);
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(30));
    let log = database.collection::<Document>(&write::change_log("inferences"));
    let seen_at = *log
        .find_one(bson::doc! { field::CHANGED_RECORD: &ids[0] })
        .run()
        .unwrap()
        .unwrap()
        .get_datetime(field::CHANGED_AT)
        .unwrap();
    // Give the follower time for a few more polls past that entry.
    std::thread::sleep(Duration::from_millis(500));

    for (id, at) in [(&ids[1], seen_at.timestamp_millis() - 1_000), (&ids[2], seen_at.timestamp_millis())] {
        let write = write::store_inference(
            &message(id, &model[id].0, &model[id].1),
            "not-a-label",
            "test",
            bson::DateTime::now(),
        );
        let Upsert { filter, update } = write.record;
        database.collection::<Document>("inferences").update_one(filter, update).upsert(true).run().unwrap();
        let at = bson::DateTime::from_millis(at);
        log.insert_one(
            bson::doc! { "_id": bson::oid::ObjectId::new(), field::CHANGED_RECORD: id, field::CHANGED_AT: at },
        )
        .run()
        .unwrap();
        let (producer, truth, _, _) = model[id].clone();
        model.insert(id.clone(), (producer, truth, Some("not-a-label".into()), false));
    }
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(30));
}
