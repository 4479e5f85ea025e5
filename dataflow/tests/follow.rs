//! `dataflow count --follow` against the real MongoDB-compatible server: the CSV keeps up with
//! inserts, label flips both ways and deletes, from several writers at once.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bson::Document;
use common::*;
use iot_bench::expected::read_error_counts;
use iot_bench::testkit::Signal;
use iot_schema::write::Upsert;
use iot_schema::{field, write};

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
    let status = follower.terminate_within(Duration::from_secs(30)).expect("--follow stops on SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(read_error_counts(&output).unwrap(), errors_of(&model));
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
    follower.kill();
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

/// A change-log entry stamped ahead of the server's clock (a client that wrote `ChangedAt`
/// itself) is applied and reported, and the changes written after it are not hidden behind it.
#[test]
fn an_entry_stamped_in_the_future_does_not_hide_later_changes() {
    let (db, mut model) = base(500, 26);
    let dir = tempfile::tempdir().unwrap();
    let (output, log) = (dir.path().join("follow.csv"), dir.path().join("follower.log"));
    let uri = mongo_uri();
    let args = ["--mongo-uri", uri.as_str(), "--db", db.name.as_str()];
    let database = db.database();
    let _follower = start_follower_logged(&args, &output, &log);
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(60));

    // The record as the contract writes it; its change-log entry stamped 5 minutes ahead.
    let ids = correct_ids(&model);
    let (producer, truth, _, _) = model[&ids[0]].clone();
    let write =
        write::store_inference(&message(&ids[0], &producer, &truth), "not-a-label", "test", bson::DateTime::now());
    let Upsert { filter, update } = write.record;
    database.collection::<Document>("inferences").update_one(filter, update).upsert(true).run().unwrap();
    let ahead = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 5 * 60_000);
    database
        .collection::<Document>(&write::change_log("inferences"))
        .insert_one(
            bson::doc! { "_id": bson::oid::ObjectId::new(), field::CHANGED_RECORD: &ids[0], field::CHANGED_AT: ahead },
        )
        .run()
        .unwrap();
    model.insert(ids[0].clone(), (producer, truth, Some("not-a-label".into()), false));
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(30));

    for id in &ids[1..=50] {
        let flipped = flip(&database, &model, id);
        model.insert(id.clone(), flipped);
    }
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(60));
    assert_eq!(count(dir.path(), "batch.csv", &args).0, errors_of(&model), "a fresh batch count agrees");
    let said = read_log(&log);
    assert!(said.contains("ahead of the server clock") && said.contains("entries=1"), "{said}");
}

/// A member of a following cluster that dies stops the others with exit code 4 and one clear
/// message, no panic; restarted, the cluster reloads and keeps up again.
#[test]
fn a_killed_member_stops_the_cluster_and_a_restart_catches_up() {
    let (db, model) = base(500, 27);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("follow.csv");
    let uri = mongo_uri();
    let args = ["--mongo-uri", uri.as_str(), "--db", db.name.as_str()];
    let database = db.database();
    let hosts = hostfile(dir.path(), 3);
    let mut cluster = start_follower_cluster(&args, &hosts, &output, dir.path(), "first");
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(90));

    cluster[1].kill();
    for p in [0, 2] {
        let status = cluster[p].expect_exit(Duration::from_secs(30));
        let said = read_log(&dir.path().join(format!("first-{p}.log")));
        assert_eq!(status.code(), Some(iot_schema::exit::PEER_LOST.into()), "process {p}: {said}");
        assert!(said.contains("cluster peer lost") && said.contains("restart every process"), "process {p}: {said}");
        assert!(!said.contains("panicked"), "process {p}: {said}");
    }
    assert_eq!(read_error_counts(&output).unwrap(), errors_of(&model), "the last consistent CSV stays");
    drop(cluster);

    let changed = write_changes(&database, &model, 2);
    let _cluster = start_follower_cluster(&args, &hosts, &output, dir.path(), "second");
    wait_for_csv(&output, &errors_of(&changed), Duration::from_secs(90));
    let changed_again = write_changes(&database, &changed, 3);
    wait_for_csv(&output, &errors_of(&changed_again), Duration::from_secs(60));
    assert_eq!(count(dir.path(), "batch.csv", &args).0, errors_of(&changed_again));
}

/// SIGTERM to a process other than 0 stops the whole cluster at the end of a round: every
/// process exits 0 and the CSV equals a fresh batch count.
#[test]
fn sigterm_to_any_member_stops_the_whole_cluster_cleanly() {
    let (db, model) = base(500, 28);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("follow.csv");
    let uri = mongo_uri();
    let args = ["--mongo-uri", uri.as_str(), "--db", db.name.as_str()];
    let hosts = hostfile(dir.path(), 3);
    let mut cluster = start_follower_cluster(&args, &hosts, &output, dir.path(), "member");
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(90));
    let changed = write_changes(&db.database(), &model, 2);
    wait_for_csv(&output, &errors_of(&changed), Duration::from_secs(60));

    cluster[1].signal(Signal::Term);
    for (p, member) in cluster.iter_mut().enumerate() {
        let status = member.expect_exit(Duration::from_secs(30));
        let said = read_log(&dir.path().join(format!("member-{p}.log")));
        assert!(status.success(), "process {p} {status}: {said}");
    }
    let said = read_log(&dir.path().join("member-0.log"));
    assert!(said.contains("process 1 was asked to stop"), "{said}");
    assert_eq!(read_error_counts(&output).unwrap(), errors_of(&changed));
    assert_eq!(count(dir.path(), "batch.csv", &args).0, errors_of(&changed));
}

/// The as-of sidecar of a follower says what the CSV counts and how far the change log was read.
#[test]
fn the_followers_sidecar_is_current() {
    let (db, model) = base(300, 29);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("follow.csv");
    let uri = mongo_uri();
    let _follower = start_follower(&["--mongo-uri", &uri, "--db", &db.name, "--output-mode", "640"], &output);
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(60));
    // A malformed record written through the contract's change log counts as malformed.
    let database = db.database();
    database
        .collection::<Document>("inferences")
        .insert_one(bson::doc! { "_id": "bad/1", "ProducerID": "bad", "GroundTruth": 7 })
        .run()
        .unwrap();
    let Upsert { filter, update } = write::change_entry("bad/1");
    database
        .collection::<Document>(&write::change_log("inferences"))
        .update_one(filter, update)
        .upsert(true)
        .run()
        .unwrap();
    let sidecar = dir.path().join("follow.csv.meta.json");
    let started = Instant::now();
    let meta = loop {
        let meta: Option<serde_json::Value> =
            std::fs::read_to_string(&sidecar).ok().and_then(|text| serde_json::from_str(&text).ok());
        if let Some(meta) = meta.filter(|meta| meta["malformed"] == 1) {
            break meta;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the sidecar never counted the malformed record");
        std::thread::sleep(Duration::from_millis(100));
    };
    let pending = model.values().filter(|(_, _, inferred, _)| inferred.is_none()).count();
    assert_eq!(meta["records"], model.len(), "{meta}");
    assert_eq!(meta["pending"], pending, "{meta}");
    assert_eq!(meta["source"], format!("{uri} {}.inferences", db.name), "{meta}");
    let watermark = meta["position"]["change_log"]["watermark"].as_str().unwrap();
    assert!(bson::DateTime::parse_rfc3339_str(watermark).is_ok(), "{meta}");
    let as_of = bson::DateTime::parse_rfc3339_str(meta["as_of"].as_str().unwrap()).unwrap();
    assert!(as_of.timestamp_millis() > bson::DateTime::now().timestamp_millis() - 60_000, "{meta}");
    use std::os::unix::fs::PermissionsExt;
    for path in [&output, &sidecar] {
        assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o640, "{}", path.display());
    }
}
