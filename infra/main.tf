# firecron on Google Cloud: one Cloud Scheduler job ticks the `dispatch` function every
# minute; dispatch claims the due occurrences in Firestore and fires one-way, signed POSTs
# at the worker functions. See /README.md ("Deploy") and docs/design.md ("Architecture").
#
#   main.tf       APIs, URLs and settings, the signing secret, the scheduler job
#   firestore.tf  database, composite indexes, TTL on finished runs
#   functions.tf  source zip and bucket, dispatch and the workers
#   iam.tf        service accounts and every grant
#   tasks.tf      the Cloud Tasks queue of `delivery: cloud_tasks`, its identity and grants
#   outputs.tf

locals {
  always_services = [
    "artifactregistry.googleapis.com",     # function images
    "cloudbuild.googleapis.com",           # function builds
    "cloudfunctions.googleapis.com",       # 2nd gen functions
    "cloudresourcemanager.googleapis.com", # project IAM grants
    "cloudscheduler.googleapis.com",       # the one tick job
    "cloudtasks.googleapis.com",           # the delivery queue (tasks.tf)
    "firestore.googleapis.com",            # the store
    "iam.googleapis.com",                  # service accounts
    "logging.googleapis.com",              # function and build logs
    "run.googleapis.com",                  # 2nd gen functions run on Cloud Run
    "secretmanager.googleapis.com",        # the signing secret
    "storage.googleapis.com",              # the source bucket
  ]
  # Pub/Sub only when schedules notify a Pub/Sub sink (var.pubsub_topics).
  pubsub_services = length(var.pubsub_topics) > 0 ? ["pubsub.googleapis.com"] : []
  services        = toset(concat(local.always_services, local.pubsub_services))

  # Every function is called at its Cloud Run service's deterministic run.app URL,
  # https://NAME-PROJECT_NUMBER.REGION.run.app, which is also the ID-token audience:
  # Cloud Run counts Cloud Scheduler's calls as internal (dispatch is internal-only) only
  # at a run.app URL, and accepts only a run.app URL (or a custom audience) as `aud`.
  # The URLs are computed, not read from service_config[0].uri (the hashed run.app form),
  # because dispatch's own URL is one of its settings (FIRECRON_DISPATCH_AUDIENCE):
  # reading it would be a cycle. `function` targets fill the {function} placeholder
  # (FIRECRON_FUNCTIONS_BASE_URL). docs/design.md, "Firing: one-way POST".
  project_number     = data.google_project.this.number
  functions_base_url = "https://{function}-${local.project_number}.${var.region}.run.app"
  dispatch_url       = replace(local.functions_base_url, "{function}", "dispatch")

  run_retention = "${var.run_retention_days}d"

  # Settings (functions/firecron/settings.py, ENV_VARS). The signing secret comes from
  # Secret Manager (secret_environment_variables in functions.tf), never from here.
  #
  # Workers fire runs too: a worker that records the end of a run with `then` steps, or of
  # a pipeline task, claims and POSTs the runs it causes at once (firecron.causes), with
  # the dispatcher's code. So they send as dispatch does (the same base URL, auth, limits
  # and deadlines; tests/test_infra.py keeps the two maps in step), and iam.tf lets them
  # invoke the workers. The deadlines (ack timeout, tick budget) are also those of the
  # watchdog, which the worker SDK stamps its runs against.
  worker_env = {
    FIRECRON_STORE              = local.store_url
    FIRECRON_NAMESPACE          = var.namespace
    FIRECRON_RUN_RETENTION      = local.run_retention
    FIRECRON_FUNCTIONS_BASE_URL = local.functions_base_url
    FIRECRON_FUNCTION_AUTH      = "oidc"
    FIRECRON_CONCURRENCY        = tostring(var.concurrency)
    FIRECRON_ACK_TIMEOUT        = var.ack_timeout
    FIRECRON_TICK_BUDGET        = var.tick_budget
    # Notifications link runs to the console the admin function serves (admin.tf).
    FIRECRON_CONSOLE_URL = local.admin_url
    # Cloud Tasks delivery (tasks.tf).
    FIRECRON_DELIVERY              = var.delivery
    FIRECRON_TASKS_QUEUE           = local.tasks_queue
    FIRECRON_TASKS_SERVICE_ACCOUNT = google_service_account.tasks.email
  }
  dispatch_env = {
    FIRECRON_STORE              = local.store_url
    FIRECRON_NAMESPACE          = var.namespace
    FIRECRON_RUN_RETENTION      = local.run_retention
    FIRECRON_FUNCTIONS_BASE_URL = local.functions_base_url
    FIRECRON_DISPATCH_AUDIENCE  = local.dispatch_url
    # The scheduler's root calls, and dispatch's own shard ticks and continuations, which
    # Cloud Tasks sends with the tasks account's ID token (iam.tf).
    FIRECRON_DISPATCH_CALLER   = "${google_service_account.scheduler.email},${google_service_account.tasks.email}"
    FIRECRON_SHARDS            = tostring(var.shards)
    FIRECRON_MAX_CONTINUATIONS = tostring(var.max_continuations)
    FIRECRON_FUNCTION_AUTH     = "oidc" # deployed workers accept only IAM-authenticated calls
    FIRECRON_CONCURRENCY       = tostring(var.concurrency)
    FIRECRON_ACK_TIMEOUT       = var.ack_timeout
    FIRECRON_TICK_BUDGET       = var.tick_budget
    # Notifications link runs to the console the admin function serves (admin.tf).
    FIRECRON_CONSOLE_URL = local.admin_url
    # Cloud Tasks delivery (tasks.tf).
    FIRECRON_DELIVERY              = var.delivery
    FIRECRON_TASKS_QUEUE           = local.tasks_queue
    FIRECRON_TASKS_SERVICE_ACCOUNT = google_service_account.tasks.email
  }
}

data "google_project" "this" {
  project_id = var.project_id
}

resource "google_project_service" "required" {
  for_each = local.services

  project = var.project_id
  service = each.value

  # Other things in the project may use these APIs too: never turn them off.
  disable_on_destroy         = false
  disable_dependent_services = false
}

# --- The signing secret (FIRECRON_SIGNING_SECRET) -----------------------------------------

# A Standard Webhooks secret, whsec_<base64 of the key>: firecron, and any receiver using a
# Standard Webhooks library, take the decoded bytes as the HMAC key. 32 random bytes.
resource "random_id" "signing" {
  count = var.signing_secret == null ? 1 : 0

  byte_length = 32
}

locals {
  # var.signing_secret wins; otherwise the generated one. A given one is not kept in the
  # state (the version below is write-only), but random_id's result is: with a generated
  # secret the state holds it, so keep the state in a private bucket (infra/README.md).
  signing_secret = coalesce(var.signing_secret, one([for id in random_id.signing : "whsec_${id.b64_std}"]))
}

resource "google_secret_manager_secret" "signing" {
  project   = var.project_id
  secret_id = "${replace(var.namespace, "_", "-")}-signing-secret"

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_version" "signing" {
  secret = google_secret_manager_secret.signing.id

  # Write-only (Terraform 1.11+): sent to Secret Manager, never stored in the state. Only
  # a change of secret_data_wo_version writes a new value, so it is derived from the
  # secret: 32 bits of its SHA-256, which say nothing useful about a 32-byte key.
  secret_data_wo         = local.signing_secret
  secret_data_wo_version = parseint(substr(sha256(local.signing_secret), 0, 8), 16)

  # A new value is a new version; the functions pin the version (functions.tf), so a
  # change redeploys them all. Create the new one before the old one is destroyed.
  lifecycle {
    create_before_destroy = true
  }
}

# --- The one Cloud Scheduler job ------------------------------------------------------------

resource "google_cloud_scheduler_job" "tick" {
  project     = var.project_id
  region      = var.region
  name        = "${replace(var.namespace, "_", "-")}-tick"
  description = "firecron (${var.namespace}): ticks the dispatch function, which fires every due schedule."
  schedule    = var.schedule
  time_zone   = "Etc/UTC"

  # Cloud Scheduler waits this long for dispatch's answer (15 s to 30 min).
  attempt_deadline = "${var.dispatch.timeout_seconds}s"

  retry_config {
    # A retried tick is harmless (claims are exactly once), and the next tick comes
    # anyway; retry a failed one quickly, within the minute.
    retry_count          = var.scheduler_retry_count
    min_backoff_duration = "5s"
    max_backoff_duration = "20s"
    max_doublings        = 2
    max_retry_duration   = "0s"
  }

  http_target {
    uri         = local.dispatch_url
    http_method = "POST"
    headers = {
      "Content-Type" = "application/json"
    }
    body = base64encode("{}")

    # dispatch is private: Cloud Run checks that this identity may invoke it, and
    # dispatch itself verifies the token against FIRECRON_DISPATCH_AUDIENCE.
    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = local.dispatch_url
    }
  }

  # Fire only once dispatch exists and the scheduler identity may call it.
  depends_on = [
    google_cloudfunctions2_function.dispatch,
    google_cloud_run_service_iam_member.scheduler_invokes_dispatch,
  ]
}
