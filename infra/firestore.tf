# Firestore: the store (schedules, runs and state entries), its indexes and the runs' TTL policy.
# The document layout and the queries are described in functions/firecron/store/firestore.py.

resource "google_firestore_database" "this" {
  count = var.create_firestore_database ? 1 : 0

  project     = var.project_id
  name        = var.firestore_database
  location_id = coalesce(var.firestore_location, var.region)
  type        = "FIRESTORE_NATIVE"

  # `terraform destroy` forgets the database but leaves it and its data in place.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.required]
}

locals {
  # With create_firestore_database = false the database must already exist (a project's
  # "(default)" usually does); Terraform then only refers to it by name.
  firestore_database = var.create_firestore_database ? google_firestore_database.this[0].name : var.firestore_database

  store_url = (
    var.firestore_database == "(default)"
    ? "firestore://${var.project_id}"
    : "firestore://${var.project_id}/${var.firestore_database}"
  )

  # Indexes. Firestore keeps an automatic single-field index (ascending and descending) on
  # every field unless it is exempted, and a single-field index cannot be declared as a
  # composite one (the API refuses it). So the two queries of every tick need nothing here:
  #   due schedules:  {namespace}_schedules  next_fire_at <= now  ORDER BY next_fire_at
  #   due watches:    {namespace}_runs       watch_at <= now      ORDER BY watch_at
  # and neither do the unfiltered run listing (ORDER BY created_at DESC, __name__ DESC),
  # a key's waiters ({namespace}_runs wait_key == key) and the state listings
  # ({namespace}_state key >= prefix AND key < prefix + "~" ORDER BY key).
  # The filtered run listings and a shard's due queries need composite indexes: this map mirrors
  # firecron.store.firestore.REQUIRED_INDEXES exactly (tests/test_infra.py compares them),
  # as {collection suffix, fields in order}; the collection is {namespace}_{suffix}.
  composite_indexes = {
    runs_by_schedule = {
      collection = "runs"
      fields = [
        { field_path = "schedule_id", order = "ASCENDING" },
        { field_path = "created_at", order = "DESCENDING" },
        { field_path = "__name__", order = "DESCENDING" },
      ]
    }
    runs_by_state = {
      collection = "runs"
      fields = [
        { field_path = "state", order = "ASCENDING" },
        { field_path = "created_at", order = "DESCENDING" },
        { field_path = "__name__", order = "DESCENDING" },
      ]
    }
    runs_by_schedule_and_state = {
      collection = "runs"
      fields = [
        { field_path = "schedule_id", order = "ASCENDING" },
        { field_path = "state", order = "ASCENDING" },
        { field_path = "created_at", order = "DESCENDING" },
        { field_path = "__name__", order = "DESCENDING" },
      ]
    }
    # A shard's due queries (FIRECRON_SHARDS above 1; firecron.core.shards): `bucket in`
    # the shard's buckets plus the time range, so each bucket's due work is its own range
    # of the index (docs/design.md, "Shards").
    schedules_due_by_bucket = {
      collection = "schedules"
      fields = [
        { field_path = "bucket", order = "ASCENDING" },
        { field_path = "next_fire_at", order = "ASCENDING" },
      ]
    }
    runs_watch_by_bucket = {
      collection = "runs"
      fields = [
        { field_path = "bucket", order = "ASCENDING" },
        { field_path = "watch_at", order = "ASCENDING" },
      ]
    }
  }
}

resource "google_firestore_index" "composite" {
  for_each = local.composite_indexes

  project     = var.project_id
  database    = local.firestore_database
  collection  = "${var.namespace}_${each.value.collection}"
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value.field_path
      order      = fields.value.order
    }
  }

  depends_on = [google_project_service.required]
}

# Finished runs carry `expire_at` (ended_at + retention: FIRECRON_RUN_RETENTION, or the
# schedule's own `retention`); Firestore's TTL deletes them after that instant, usually
# within a day. Runs still in flight have no expire_at and are never deleted.
resource "google_firestore_field" "runs_expire_at" {
  project    = var.project_id
  database   = local.firestore_database
  collection = "${var.namespace}_runs"
  field      = "expire_at"

  ttl_config {}

  # Nothing queries expire_at: an empty index_config drops its single-field indexes, which
  # saves an index write per finished run (Google's advice for TTL timestamp fields).
  index_config {}

  depends_on = [google_project_service.required]
}

# The stores keep each record's body as one JSON text field beside the few fields that
# are queried (store/firestore.py), and a state entry's value as JSON text. Nothing
# queries the bodies or the values, nor a run's marks (the native map "marks", which
# pipeline tasks write one entry at a time), and Firestore
# would otherwise index every one of them, and every entry of the map, on every write:
# exempt them (a map's entries inherit its exemption).
locals {
  unindexed_fields = {
    runs_data       = { collection = "${var.namespace}_runs", field = "data" }
    runs_marks      = { collection = "${var.namespace}_runs", field = "marks" }
    schedules_spec  = { collection = "${var.namespace}_schedules", field = "spec" }
    schedules_state = { collection = "${var.namespace}_schedules", field = "state" }
    # A state entry's value (JSON text up to 64 KiB): read by waits, never queried.
    state_value = { collection = "${var.namespace}_state", field = "value" }
    # A log chunk's lines (JSON text up to 512 KiB): only run_id is queried.
    logs_lines = { collection = "${var.namespace}_logs", field = "lines" }
  }
}

# Captured log lines (store/firestore.py, {namespace}_logs) carry `expire_at` too: their
# write time + the run's retention, so a run's logs go when the run does.
resource "google_firestore_field" "logs_expire_at" {
  project    = var.project_id
  database   = local.firestore_database
  collection = "${var.namespace}_logs"
  field      = "expire_at"

  ttl_config {}
  index_config {}

  depends_on = [google_project_service.required]
}

resource "google_firestore_field" "unindexed" {
  # With shards, the time fields too (sharded_time_fields below): no query needs their
  # single-field indexes.
  for_each = merge(local.unindexed_fields, local.sharded_time_fields)

  project    = var.project_id
  database   = local.firestore_database
  collection = each.value.collection
  field      = each.value.field

  index_config {}

  depends_on = [google_project_service.required]
}

# Firestore holds about 500 writes/s on an index whose values only grow (a time): every
# new entry lands on one tablet. With shards (var.shards > 1) every due query goes
# through the (bucket, time) composite indexes above, whose entries spread over 60
# buckets, so the single-field indexes of next_fire_at and watch_at serve nothing and
# would be the hot spot: drop them. With one shard the unsharded due queries need them.
# docs/design.md, "Firestore's 500 writes/s".
locals {
  sharded_time_fields = var.shards > 1 ? {
    schedules_next_fire_at = { collection = "${var.namespace}_schedules", field = "next_fire_at" }
    runs_watch_at          = { collection = "${var.namespace}_runs", field = "watch_at" }
  } : {}
}
