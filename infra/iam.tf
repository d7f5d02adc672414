# Identities and who may do what. Nothing is public: every member below is one of these
# service accounts, but for var.admin_members, who may invoke the admin function
# (tests/test_infra.py checks it).
#
#   scheduler  may invoke dispatch, nothing else (Cloud Scheduler signs its OIDC token as it)
#   dispatch   reads/writes Firestore, reads the signing secret, invokes each worker
#   workers    read/write Firestore (run state, heartbeats), read the signing secret, invoke
#              each worker (a worker fires the runs its ends cause: `then` steps, pipeline tasks)
#   admin      reads/writes Firestore, reads the signing secret, invokes each worker (admin.tf);
#              var.admin_members may invoke it, nobody else
#   (all three) publish to var.pubsub_topics, the Pub/Sub sinks of notifications
#   build      builds the functions' images (Cloud Build), instead of a default account

locals {
  # Service account ids are 6-30 characters of [a-z0-9-]; the namespace may be longer.
  account_prefix = trimsuffix(substr(replace(var.namespace, "_", "-"), 0, 19), "-")

  # The identities that run firecron's code (admin's account is in admin.tf): each uses
  # the store, reads the signing secret, fires runs and delivers events.
  function_members = {
    dispatch = "serviceAccount:${google_service_account.dispatch.email}"
    workers  = "serviceAccount:${google_service_account.workers.email}"
    admin    = "serviceAccount:${google_service_account.admin.email}"
  }
}

resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "${local.account_prefix}-scheduler"
  display_name = "firecron scheduler (${var.namespace})"
  description  = "Identity of the Cloud Scheduler job's OIDC token; may invoke only the dispatch function."

  depends_on = [google_project_service.required]
}

resource "google_service_account" "dispatch" {
  project      = var.project_id
  account_id   = "${local.account_prefix}-dispatch"
  display_name = "firecron dispatcher (${var.namespace})"
  description  = "Runs the dispatch function: Firestore, the signing secret, and invoking the workers."

  depends_on = [google_project_service.required]
}

resource "google_service_account" "workers" {
  project      = var.project_id
  account_id   = "${local.account_prefix}-workers"
  display_name = "firecron workers (${var.namespace})"
  description  = "Runs the worker functions: Firestore, the signing secret, and invoking the workers."

  depends_on = [google_project_service.required]
}

resource "google_service_account" "build" {
  project      = var.project_id
  account_id   = "${local.account_prefix}-build"
  display_name = "firecron function builds (${var.namespace})"
  description  = "Cloud Build identity for building the functions (new projects give the default one no rights)."

  depends_on = [google_project_service.required]
}

# --- Firestore: project-level, as Firestore IAM is granted on the project ------------------

resource "google_project_iam_member" "datastore_user" {
  for_each = local.function_members

  project = var.project_id
  role    = "roles/datastore.user"
  member  = each.value
}

# --- The signing secret: readable by the function identities only ------------------------

resource "google_secret_manager_secret_iam_member" "signing_accessor" {
  for_each = local.function_members

  project   = var.project_id
  secret_id = google_secret_manager_secret.signing.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = each.value
}

# --- Notification secrets: readable by the function identities that deliver events ------

locals {
  # One grant per (secret, identity): "dispatch/PD_ROUTING_KEY" => {secret, member}.
  notification_secret_grants = {
    for pair in setproduct(keys(var.notification_secrets), keys(local.function_members)) :
    "${pair[1]}/${pair[0]}" => {
      secret = var.notification_secrets[pair[0]]
      member = local.function_members[pair[1]]
    }
  }
}

resource "google_secret_manager_secret_iam_member" "notification_secret_readers" {
  for_each = local.notification_secret_grants

  project   = var.project_id
  secret_id = each.value.secret
  role      = "roles/secretmanager.secretAccessor"
  member    = each.value.member
}

# --- Invocation: a 2nd gen function is a Cloud Run service, invoked with roles/run.invoker --

resource "google_cloud_run_service_iam_member" "scheduler_invokes_dispatch" {
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.dispatch.service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

# dispatch calls itself (the root tick's shard ticks and a tick's continuation;
# functions/firecron/_dispatch_http.py) through the Cloud Tasks queue (tasks.tf): dispatch's
# ingress is internal-only, and a task that Cloud Tasks sends counts as internal where
# dispatch's own POST to its run.app URL would not. The tasks' ID tokens are the tasks
# account's.
resource "google_cloud_run_service_iam_member" "tasks_invoke_dispatch" {
  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.dispatch.service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.tasks.email}"
}

resource "google_cloud_run_service_iam_member" "dispatch_invokes_worker" {
  for_each = google_cloudfunctions2_function.worker

  project  = var.project_id
  location = var.region
  service  = each.value.service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.dispatch.email}"
}

# A worker that ends a run with `then` steps or a pipeline task fires the next runs itself,
# calling their workers with an ID token of its own identity (Cloud Run's metadata server
# mints it for the runtime service account: no token-creator role is needed).
resource "google_cloud_run_service_iam_member" "workers_invoke_worker" {
  for_each = google_cloudfunctions2_function.worker

  project  = var.project_id
  location = var.region
  service  = each.value.service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.workers.email}"
}

# --- Builds: the roles Google documents for a custom function build account ---------------

resource "google_project_iam_member" "build" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/artifactregistry.writer",
    "roles/storage.objectAdmin",
  ])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.build.email}"
}

# IAM grants take a while to propagate: a build that starts at once cannot pull the source
# zip, and a new revision cannot read the secret. Wait, as the provider's own 2nd gen
# function example does; both functions depend on this.
resource "time_sleep" "grants_settle" {
  create_duration = "60s"

  depends_on = [
    google_project_iam_member.build,
    google_secret_manager_secret_iam_member.signing_accessor,
    google_secret_manager_secret_iam_member.notification_secret_readers,
  ]
}

# --- Pub/Sub sinks: the function identities publish events (outbox) to these topics --------

resource "google_pubsub_topic_iam_member" "dispatch_publishes" {
  for_each = toset(var.pubsub_topics)

  project = split("/", each.value)[1]
  topic   = each.value
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.dispatch.email}"

  depends_on = [google_project_service.required]
}

resource "google_pubsub_topic_iam_member" "workers_publish" {
  for_each = toset(var.pubsub_topics)

  project = split("/", each.value)[1]
  topic   = each.value
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.workers.email}"

  depends_on = [google_project_service.required]
}
