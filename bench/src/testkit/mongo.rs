//! A database of the test's own on a MongoDB-compatible server, dropped when the test ends.

use mongodb::sync::{Client, Database};

use super::unique_name;

/// A database no other test uses (`<prefix>_<pid>_<n>_<nanos>`), dropped when this is dropped,
/// whether the test passed or not.
pub struct TestDb {
    pub client: Client,
    pub name: String,
}

impl TestDb {
    /// Connects to `uri`, failing early with the fix when nothing answers there.
    pub fn new(uri: &str, prefix: &str) -> TestDb {
        let client = Client::with_uri_str(uri).unwrap_or_else(|e| panic!("bad MongoDB URI {uri}: {e}"));
        client
            .database("admin")
            .run_command(bson::doc! { "ping": 1 })
            .run()
            .unwrap_or_else(|err| panic!("no MongoDB at {uri} ({err}); start the stack with scripts/stack up"));
        TestDb { client, name: unique_name(prefix) }
    }

    pub fn database(&self) -> Database {
        self.client.database(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.database().drop().run();
    }
}
