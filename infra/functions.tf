# The functions: `dispatch` and one per entry of var.functions, all built from functions/
# (main.py, requirements.txt and the vendored firecron package). `make deploy` regenerates
# functions/requirements.txt from pyproject.toml before Terraform zips the folder.

locals {
  source_bucket = coalesce(var.source_bucket_name, "${var.project_id}-${replace(var.namespace, "_", "-")}-source")
}

resource "google_storage_bucket" "source" {
  project                     = var.project_id
  name                        = local.source_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # It only holds source zips, which Terraform itself uploads.
  force_destroy = true

  lifecycle {
    precondition {
      condition     = length(local.source_bucket) <= 63
      error_message = "The source bucket name \"${local.source_bucket}\" is longer than 63 characters: set source_bucket_name."
    }
  }

  depends_on = [google_project_service.required]
}

data "archive_file" "source" {
  type        = "zip"
  source_dir  = "${path.module}/../functions"
  output_path = "${path.module}/.terraform/firecron-functions.zip"

  # The zip's entries carry no timestamps, so its md5 changes only when the content does.
  excludes = [
    "**/__pycache__",
    "**/__pycache__/**",
    "**/*.pyc",
    "**/*.egg-info",
    "**/*.egg-info/**",
    "**/.firecron",
    "**/.firecron/**",
    "**/.pytest_cache",
    "**/.pytest_cache/**",
    "**/.DS_Store",
  ]
}

resource "google_storage_bucket_object" "source" {
  # Named by content: a change is a new object, hence a new build of every function.
  name   = "functions-${data.archive_file.source.output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.source.output_path
}

# --- dispatch ----------------------------------------------------------------------------

resource "google_cloudfunctions2_function" "dispatch" {
  project     = var.project_id
  location    = var.region
  name        = "dispatch"
  description = "firecron dispatcher (${var.namespace}): claims the due occurrences and fires them, once a tick."
  labels      = { firecron-role = "dispatch", firecron-namespace = var.namespace }

  build_config {
    runtime         = var.python_runtime
    entry_point     = "dispatch"
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory = var.dispatch.memory
    # null: the platform's default for the memory (a fraction of a vCPU below 1 GiB); a
    # tick is CPU-bound past a few hundred runs, so scale deployments give it a whole one.
    available_cpu      = var.dispatch.cpu
    timeout_seconds    = var.dispatch.timeout_seconds
    min_instance_count = 0
    # At once, per minute: the root call, each shard's tick and the continuation it may
    # POST before it returns; so at least 2 N + 1 (docs/design.md, "Shards").
    max_instance_count               = max(var.dispatch.max_instances, 2 * var.shards + 1)
    max_instance_request_concurrency = 1
    all_traffic_on_latest_revision   = true

    # Private: only Google-internal callers in this project (Cloud Scheduler is one) reach
    # it, and IAM lets only the scheduler's identity invoke it (iam.tf).
    ingress_settings      = "ALLOW_INTERNAL_ONLY"
    service_account_email = google_service_account.dispatch.email
    environment_variables = local.dispatch_env

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

# --- workers -----------------------------------------------------------------------------

resource "google_cloudfunctions2_function" "worker" {
  for_each = var.functions

  project     = var.project_id
  location    = var.region
  name        = each.key
  description = "firecron worker (${var.namespace}): entry point ${each.value.entry_point} of functions/main.py."
  labels      = { firecron-role = "worker", firecron-namespace = var.namespace }

  build_config {
    runtime         = var.python_runtime
    entry_point     = each.value.entry_point
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory   = each.value.memory
    timeout_seconds    = each.value.timeout_seconds
    min_instance_count = 0
    max_instance_count = each.value.max_instances
    # One run per instance: the worker keeps the request open while it works.
    max_instance_request_concurrency = 1
    all_traffic_on_latest_revision   = true

    # Reachable, but every call needs an ID token (aud: this service's run.app URL) of an
    # identity allowed to invoke it, and only the dispatcher's and the workers' are (iam.tf:
    # workers fire the runs their ends cause); the SDK also verifies the HMAC signature.
    ingress_settings      = "ALLOW_ALL"
    service_account_email = google_service_account.workers.email
    environment_variables = local.worker_env

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

  lifecycle {
    precondition {
      # Cloud Run gives a service its deterministic URL only while NAME-PROJECT_NUMBER
      # fits one DNS label, and dispatch calls the worker there.
      condition     = length("${each.key}-${local.project_number}") <= 63
      error_message = "functions: \"${each.key}\" is too long for its run.app URL ${replace(local.functions_base_url, "{function}", each.key)}: use a name of at most ${62 - length(local.project_number)} characters."
    }
  }

  depends_on = [
    google_project_iam_member.datastore_user,
    time_sleep.grants_settle,
  ]
}

# --- The computed URLs must be the real ones -----------------------------------------------

# The scheduler job calls, and dispatch verifies, local.dispatch_url; Cloud Run must serve
# dispatch there. (A failed check warns; `make smoke` then fails at the scheduler step.)
check "dispatch_url" {
  data "google_cloud_run_v2_service" "dispatch" {
    project  = var.project_id
    location = var.region
    name     = google_cloudfunctions2_function.dispatch.name
  }

  assert {
    condition     = try(contains(data.google_cloud_run_v2_service.dispatch.urls, local.dispatch_url), false)
    error_message = "dispatch is not served at ${local.dispatch_url}, which the scheduler job calls and dispatch takes as its audience (FIRECRON_DISPATCH_AUDIENCE); workers are expected at ${local.functions_base_url} (FIRECRON_FUNCTIONS_BASE_URL)."
  }
}
