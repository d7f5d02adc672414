# The admin function: the admin API (/api/v1) and the web console (/), served by
# firecron.api from functions/main.py's `admin` entry point.
#
# Reachable from anywhere (people call it), but Cloud Run lets through only ID tokens of
# var.admin_members (roles/run.invoker below), and the code checks the token again: its
# audience (FIRECRON_ADMIN_AUDIENCE, this function's URL) and its email against the same
# list (FIRECRON_ADMIN_MEMBERS). It runs as its own identity: Firestore, the signing
# secret (a trigger or re-run is signed like any dispatch) and invoking the workers.

locals {
  admin_url = replace(local.functions_base_url, "{function}", "admin")

  admin_env = {
    FIRECRON_STORE              = local.store_url
    FIRECRON_NAMESPACE          = var.namespace
    FIRECRON_RUN_RETENTION      = local.run_retention
    FIRECRON_FUNCTIONS_BASE_URL = local.functions_base_url
    FIRECRON_FUNCTION_AUTH      = "oidc" # it fires runs as dispatch does
    FIRECRON_CONCURRENCY        = tostring(var.concurrency)
    FIRECRON_ACK_TIMEOUT        = var.ack_timeout
    # It fires runs as dispatch does, through the Cloud Tasks queue too (tasks.tf).
    FIRECRON_DELIVERY              = var.delivery
    FIRECRON_TASKS_QUEUE           = local.tasks_queue
    FIRECRON_TASKS_SERVICE_ACCOUNT = google_service_account.tasks.email
    FIRECRON_ADMIN_AUDIENCE        = local.admin_url
    FIRECRON_ADMIN_MEMBERS         = join(",", var.admin_members)
  }
}

resource "google_service_account" "admin" {
  project      = var.project_id
  account_id   = "${local.account_prefix}-admin"
  display_name = "firecron admin API (${var.namespace})"
  description  = "Runs the admin function: Firestore, the signing secret, and invoking the workers (triggers, re-runs, backfills)."

  depends_on = [google_project_service.required]
}

resource "google_cloudfunctions2_function" "admin" {
  project     = var.project_id
  location    = var.region
  name        = "admin"
  description = "firecron admin API and web console (${var.namespace}), for var.admin_members."
  labels      = { firecron-role = "admin", firecron-namespace = var.namespace }

  build_config {
    runtime         = var.python_runtime
    entry_point     = "admin"
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory                 = "512M"
    timeout_seconds                  = 300
    min_instance_count               = 0
    max_instance_count               = 3
    max_instance_request_concurrency = 16 # pages and API calls are short; the store is async
    all_traffic_on_latest_revision   = true

    ingress_settings      = "ALLOW_ALL"
    service_account_email = google_service_account.admin.email
    environment_variables = local.admin_env

    secret_environment_variables {
      key        = "FIRECRON_SIGNING_SECRET"
      project_id = local.project_number
      secret     = google_secret_manager_secret.signing.secret_id
      version    = google_secret_manager_secret_version.signing.version
    }

    # The secrets notification sinks name (routing_key_env, password_env): iam.tf lets
    # this identity read them.
    dynamic "secret_environment_variables" {
      for_each = var.notification_secrets
      content {
        key        = secret_environment_variables.key
        project_id = local.project_number
        secret     = secret_environment_variables.value
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_iam_member.datastore_user,
    time_sleep.grants_settle,
  ]
}

# Who may call it: exactly var.admin_members (users and service accounts).
resource "google_cloud_run_service_iam_member" "admin_members_invoke_admin" {
  for_each = toset(var.admin_members)

  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.admin.service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

# A trigger, re-run or backfill fires its runs from the admin function, with an ID token
# of its own identity.
resource "google_cloud_run_service_iam_member" "admin_invokes_worker" {
  for_each = google_cloudfunctions2_function.worker

  project  = var.project_id
  location = var.region
  service  = each.value.service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.admin.email}"
}

resource "google_pubsub_topic_iam_member" "admin_publishes" {
  for_each = toset(var.pubsub_topics)

  project = split("/", each.value)[1]
  topic   = each.value
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.admin.email}"

  depends_on = [google_project_service.required]
}
