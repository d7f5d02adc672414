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
    available_memory                 = var.dispatch.memory
    timeout_seconds                  = var.dispatch.timeout_seconds
    min_instance_count               = 0
    max_instance_count               = var.dispatch.max_instances
    max_instance_request_concurrency = 1
    all_traffic_on_latest_revision   = true

    # Private: only Google-internal callers in this project (Cloud Scheduler is one) reach
    # it, and IAM lets only the scheduler's identity invoke it (iam.tf).
    ingress_settings      = "ALLOW_INTERNAL_ONLY"
    service_account_email = google_service_account.dispatch.email
    environment_variables = local.dispatch_env

    secret_environment_variables {
      key        = "FIRECRON_SIGNING_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.signing.secret_id
      version    = google_secret_manager_secret_version.signing.version
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_project_iam_member.datastore_user,
    google_secret_manager_secret_iam_member.signing_accessor,
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

    # Reachable, but every call needs an ID token of an identity allowed to invoke it, and
    # only the dispatcher's is (iam.tf); the SDK also verifies the HMAC signature.
    ingress_settings      = "ALLOW_ALL"
    service_account_email = google_service_account.workers.email
    environment_variables = local.worker_env

    secret_environment_variables {
      key        = "FIRECRON_SIGNING_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.signing.secret_id
      version    = google_secret_manager_secret_version.signing.version
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_project_iam_member.datastore_user,
    google_secret_manager_secret_iam_member.signing_accessor,
  ]
}

# --- The computed URLs must be the real ones -----------------------------------------------

check "function_urls" {
  assert {
    condition = alltrue(concat(
      [google_cloudfunctions2_function.dispatch.url == local.dispatch_url],
      [for name, f in google_cloudfunctions2_function.worker : f.url == "${local.functions_base_url}/${name}"],
    ))
    error_message = "A function's URL differs from ${local.functions_base_url}/NAME, which dispatch uses (FIRECRON_FUNCTIONS_BASE_URL, FIRECRON_DISPATCH_AUDIENCE) and the scheduler job calls."
  }
}
