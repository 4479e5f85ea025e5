// Runs once, when MongoDB starts on an empty volume (docker-entrypoint-initdb.d), as the root user.
// Creates the application's user and the indexes the pipeline relies on: ChangedAt on the change
// log, which the incremental dataflow polls (iot_schema::write::CHANGE_LOG_INDEXED_FIELDS), and
// UpdatedAt and ProducerID on the records (iot_schema::write::INDEXED_FIELDS).
const iot = db.getSiblingDB("iot");
const user = process.env.IOT_MONGO_USERNAME;
const password = process.env.IOT_MONGO_PASSWORD;
if (!user || !password) {
  throw new Error("IOT_MONGO_USERNAME and IOT_MONGO_PASSWORD must be set (Secret mongo-credentials)");
}
if (iot.getUser(user) === null) {
  iot.createUser({ user: user, pwd: password, roles: [{ role: "readWrite", db: "iot" }] });
}
iot.inferences.createIndex({ UpdatedAt: 1 }, { name: "UpdatedAt_1" });
iot.inferences.createIndex({ ProducerID: 1 }, { name: "ProducerID_1" });
iot.inferences_changes.createIndex({ ChangedAt: 1 }, { name: "ChangedAt_1" });
